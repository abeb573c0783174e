//! `POST /v1/completions`.

use crate::error::{ApiError, ApiJson};
use crate::generation::{
    chunk_stream, collect_all, sse, submit, token_text, ChoiceEvent, ChoiceOutput, PromptUsage, ResponseMeta,
};
use crate::models::check_model;
use crate::params::{check_token_ids, num_choices, sampling_params, RequestParams};
use crate::request_id::RequestId;
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tessera_core::openai::{
    finish_reason_str, CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt,
    Usage, OBJECT_TEXT_COMPLETION,
};
use tessera_engine::TokenOutput;

/// OpenAI's default for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

fn prompts(state: &AppState, prompt: &Prompt) -> Result<Vec<Vec<u32>>, ApiError> {
    let tokenizer = state.engine.tokenizer();
    let encode =
        |text: &String| tokenizer.encode(text, true).map_err(|e| ApiError::invalid("prompt", e.to_string()));
    let prompts = match prompt {
        Prompt::Text(text) => vec![encode(text)?],
        Prompt::Texts(texts) => texts.iter().map(encode).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenBatches(batches) => batches.clone(),
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
    }
    for ids in &prompts {
        check_token_ids("prompt", ids, state.engine.spec().vocab_size)?;
    }
    Ok(prompts)
}

fn logprobs(state: &AppState, tokens: &[TokenOutput], mut offset: u32) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for token in tokens {
        out.tokens.push(token_text(state, token.token_id));
        out.text_offset.push(offset);
        offset += token.text.len() as u32;
        out.token_logprobs.push(token.logprobs.as_ref().map(|l| l.logprob));
        out.top_logprobs.push(
            token.logprobs.as_ref().map(|l| {
                l.top.iter().map(|&(id, lp)| (token_text(state, id), lp)).collect::<HashMap<_, _>>()
            }),
        );
    }
    out
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &req.model)?;
    let params = RequestParams::from(&req);
    let n = num_choices(&params, state.config.max_n)?;
    let prompts = prompts(&state, &req.prompt)?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (max_len, vocab) = (state.engine.max_model_len(), state.engine.spec().vocab_size);
    let sampling = sampling_params(&params, "prompt", longest, max_len, vocab, Some(DEFAULT_MAX_TOKENS))?;
    let prompt_usage =
        PromptUsage { num_prompt_tokens: prompts.iter().map(Vec::len).sum(), choices_per_prompt: n };
    let echo = req.echo.unwrap_or(false).then(|| prompt_texts(&state, &prompts));
    let streams = submit(&state, &prompts, &sampling, n, req.priority.unwrap_or(0)).await?;
    let meta = ResponseMeta::new("cmpl", &request_id.0, &state.model_name);
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let with_logprobs = req.logprobs.is_some();
        return Ok(stream_response(state, streams, meta, prompt_usage, include_usage, with_logprobs));
    }
    let outputs = collect_all(streams).await?;
    let usage = Some(prompt_usage.usage_of(&outputs));
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(i, out): (usize, ChoiceOutput)| {
            let prefix = echo.as_ref().map(|texts| texts[i / n as usize].clone()).unwrap_or_default();
            CompletionChoice {
                index: i as u32,
                logprobs: req.logprobs.map(|_| logprobs(&state, &out.tokens, prefix.len() as u32)),
                text: prefix + &out.text,
                finish_reason: Some(finish_reason_str(out.reason).to_string()),
            }
        })
        .collect();
    let ResponseMeta { id, created, model } = meta;
    Ok(Json(CompletionResponse { id, object: OBJECT_TEXT_COMPLETION.into(), created, model, choices, usage })
        .into_response())
}

fn prompt_texts(state: &AppState, prompts: &[Vec<u32>]) -> Vec<String> {
    prompts.iter().map(|ids| state.engine.tokenizer().decode(ids, true).unwrap_or_default()).collect()
}

fn chunk(meta: &ResponseMeta, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Value {
    let chunk = CompletionResponse {
        id: meta.id.clone(),
        object: OBJECT_TEXT_COMPLETION.into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
    };
    serde_json::to_value(chunk).expect("chunks serialize")
}

fn stream_response(
    state: Arc<AppState>,
    streams: Vec<tessera_engine::RequestStream>,
    meta: ResponseMeta,
    prompt_usage: PromptUsage,
    include_usage: bool,
    with_logprobs: bool,
) -> Response {
    let mut offsets: HashMap<u32, u32> = HashMap::new();
    let chunk_meta = meta.clone();
    let render = move |index, event| {
        let choice = match event {
            ChoiceEvent::Token(token) => {
                let offset = offsets.entry(index).or_default();
                let logprobs = with_logprobs.then(|| logprobs(&state, std::slice::from_ref(&token), *offset));
                *offset += token.text.len() as u32;
                CompletionChoice { index, text: token.text, logprobs, finish_reason: None }
            }
            ChoiceEvent::Finished(reason) => CompletionChoice {
                index,
                finish_reason: Some(finish_reason_str(reason).to_string()),
                ..Default::default()
            },
        };
        chunk(&chunk_meta, vec![choice], None)
    };
    let usage = include_usage.then_some(move |usage| chunk(&meta, Vec::new(), Some(usage)));
    sse(chunk_stream(streams, prompt_usage, render, usage)).into_response()
}
