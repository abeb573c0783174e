//! `POST /v1/chat/completions`: the chat template turns messages into a prompt; the rest is the
//! completions path with chat-shaped responses.

use crate::error::{ApiError, ApiJson};
use crate::generation::{
    chunk_stream, collect_all, sse, submit, token_text, ChoiceEvent, PromptUsage, ResponseMeta,
};
use crate::models::check_model;
use crate::params::{num_choices, sampling_params, RequestParams};
use crate::request_id::RequestId;
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use tessera_core::openai::{
    finish_reason_str, ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatLogprobs, ChatResponseMessage, ChatTokenLogprob, ChunkChoice, Delta, Role, TopLogprob, Usage,
    OBJECT_CHAT_COMPLETION, OBJECT_CHAT_COMPLETION_CHUNK,
};
use tessera_engine::TokenOutput;

fn prompt_ids(state: &AppState, req: &ChatCompletionRequest) -> Result<Vec<u32>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let text = state.chat_template.render(&req.messages).map_err(|e| ApiError::invalid("messages", e))?;
    // A model's own template writes its special tokens; the fallback relies on the tokenizer's.
    let add_special = !state.chat_template.from_model;
    state
        .engine
        .tokenizer()
        .encode(&text, add_special)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
}

fn logprobs(state: &AppState, tokens: &[TokenOutput]) -> ChatLogprobs {
    let entry = |id: u32, logprob: f32| {
        let token = token_text(state, id);
        TopLogprob { bytes: Some(token.as_bytes().to_vec()), token, logprob }
    };
    let content = tokens
        .iter()
        .filter_map(|t| t.logprobs.as_ref().map(|l| (t.token_id, l)))
        .map(|(id, l)| {
            let chosen = entry(id, l.logprob);
            ChatTokenLogprob {
                token: chosen.token,
                logprob: chosen.logprob,
                bytes: chosen.bytes,
                top_logprobs: l.top.iter().map(|&(id, lp)| entry(id, lp)).collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

fn chunk(meta: &ResponseMeta, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Value {
    let chunk = ChatCompletionChunk {
        id: meta.id.clone(),
        object: OBJECT_CHAT_COMPLETION_CHUNK.into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
    };
    serde_json::to_value(chunk).expect("chunks serialize")
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &req.model)?;
    let params = RequestParams::from(&req);
    let n = num_choices(&params, state.config.max_n)?;
    let prompt = prompt_ids(&state, &req)?;
    let (max_len, vocab) = (state.engine.max_model_len(), state.engine.spec().vocab_size);
    let sampling = sampling_params(&params, "messages", prompt.len(), max_len, vocab, None)?;
    let prompt_usage = PromptUsage { num_prompt_tokens: prompt.len(), choices_per_prompt: n };
    let streams = submit(&state, &[prompt], &sampling, n, req.priority.unwrap_or(0)).await?;
    let meta = ResponseMeta::new("chatcmpl", &request_id.0, &state.model_name);
    let with_logprobs = req.logprobs == Some(true);
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        return Ok(stream_response(state, streams, meta, prompt_usage, include_usage, with_logprobs));
    }
    let outputs = collect_all(streams).await?;
    let usage = prompt_usage.usage_of(&outputs);
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(i, out)| ChatChoice {
            index: i as u32,
            logprobs: with_logprobs.then(|| logprobs(&state, &out.tokens)),
            message: ChatResponseMessage { role: Role::Assistant, content: Some(out.text) },
            finish_reason: Some(finish_reason_str(out.reason).to_string()),
        })
        .collect();
    Ok(Json(ChatCompletionResponse {
        id: meta.id,
        object: OBJECT_CHAT_COMPLETION.into(),
        created: meta.created,
        model: meta.model,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

fn stream_response(
    state: Arc<AppState>,
    streams: Vec<tessera_engine::RequestStream>,
    meta: ResponseMeta,
    prompt_usage: PromptUsage,
    include_usage: bool,
    with_logprobs: bool,
) -> Response {
    // OpenAI opens every choice with the assistant role and no content.
    let opening: Vec<Value> = (0..streams.len() as u32)
        .map(|index| {
            let delta = Delta { role: Some(Role::Assistant), content: Some(String::new()) };
            chunk(&meta, vec![ChunkChoice { index, delta, logprobs: None, finish_reason: None }], None)
        })
        .collect();
    let chunk_meta = meta.clone();
    let render = move |index, event| {
        let choice = match event {
            ChoiceEvent::Token(token) => {
                let logprobs = with_logprobs.then(|| logprobs(&state, std::slice::from_ref(&token)));
                let delta = Delta { role: None, content: Some(token.text) };
                ChunkChoice { index, delta, logprobs, finish_reason: None }
            }
            ChoiceEvent::Finished(reason) => {
                let finish_reason = Some(finish_reason_str(reason).to_string());
                ChunkChoice { index, delta: Delta::default(), logprobs: None, finish_reason }
            }
        };
        chunk(&chunk_meta, vec![choice], None)
    };
    let usage = include_usage.then_some(move |usage| chunk(&meta, Vec::new(), Some(usage)));
    let chunks = chunk_stream(streams, prompt_usage, render, usage);
    sse(futures_util::stream::iter(opening).chain(chunks)).into_response()
}
