//! What completions and chat share: submitting `n` choices per prompt to the engine, collecting
//! a choice's output, and the SSE framing of streamed chunks.

use crate::error::ApiError;
use crate::state::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use tessera_core::openai::Usage;
use tessera_core::{FinishReason, SamplingParams};
use tessera_engine::{GenerateRequest, Prompt, RequestStream, TokenEvent, TokenOutput};

/// What every response and chunk of one request repeats: its id, creation time and model.
#[derive(Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    /// `id_prefix` is OpenAI's (`cmpl`, `chatcmpl`); the rest is the request's id.
    pub fn new(id_prefix: &str, request_id: &str, model: &str) -> Self {
        ResponseMeta {
            id: format!("{id_prefix}-{request_id}"),
            created: crate::state::unix_now(),
            model: model.into(),
        }
    }
}

/// One engine request per choice. If any is refused, those already admitted are dropped (and so
/// aborted) and the refusal is returned.
pub async fn submit(
    state: &AppState,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    n: u32,
    priority: i32,
) -> Result<Vec<RequestStream>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let mut streams = Vec::with_capacity(prompts.len() * n as usize);
    for prompt in prompts {
        for i in 0..n {
            let mut params = params.clone();
            // Distinct but reproducible seeds, so that n > 1 gives n different samples.
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let request =
                GenerateRequest { priority, ..GenerateRequest::new(Prompt::Tokens(prompt.clone()), params) };
            streams.push(state.engine.generate(request).await?);
        }
    }
    Ok(streams)
}

/// Everything one choice produced.
pub struct ChoiceOutput {
    pub tokens: Vec<TokenOutput>,
    pub text: String,
    pub reason: FinishReason,
    pub num_cached_tokens: usize,
}

/// The prompt side of a response's `usage`: its prompts' tokens and how many choices each prompt
/// has. Choices are prompt-major (choice `i` is of prompt `i / choices_per_prompt`); only a
/// prompt's first choice reports that prompt's prefix-cache hits, since its siblings would count
/// the same prompt tokens again (`prompt_tokens` counts each prompt once).
#[derive(Clone, Copy, Debug)]
pub struct PromptUsage {
    pub num_prompt_tokens: usize,
    pub choices_per_prompt: u32,
}

impl PromptUsage {
    pub fn counts_cache_of(&self, choice: u32) -> bool {
        choice.is_multiple_of(self.choices_per_prompt.max(1))
    }

    pub fn usage(&self, completion_tokens: u32, cached_tokens: usize) -> Usage {
        Usage::new(self.num_prompt_tokens as u32, completion_tokens).with_cached_tokens(cached_tokens as u32)
    }

    /// `usage` of a response whose choices all ended.
    pub fn usage_of(&self, outputs: &[ChoiceOutput]) -> Usage {
        let completion_tokens = outputs.iter().map(|o| o.tokens.len() as u32).sum();
        let cached =
            (0u32..).zip(outputs).filter(|(i, _)| self.counts_cache_of(*i)).map(|(_, o)| o.num_cached_tokens);
        self.usage(completion_tokens, cached.sum())
    }
}

pub async fn collect(mut stream: RequestStream) -> Result<ChoiceOutput, ApiError> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(token) => {
                text.push_str(&token.text);
                tokens.push(token);
            }
            TokenEvent::Finished(done) => {
                let num_cached_tokens = done.num_cached_tokens;
                return Ok(ChoiceOutput { tokens, text, reason: done.reason, num_cached_tokens });
            }
            TokenEvent::Error(err) => return Err(err.into()),
        }
    }
    Err(ApiError::internal("the request ended without a result"))
}

/// Collects every choice concurrently, in order.
pub async fn collect_all(streams: Vec<RequestStream>) -> Result<Vec<ChoiceOutput>, ApiError> {
    futures_util::future::join_all(streams.into_iter().map(collect)).await.into_iter().collect()
}

/// All choices' events, tagged with the choice index, as they come.
pub fn merged(streams: Vec<RequestStream>) -> impl Stream<Item = (u32, TokenEvent)> + Send {
    futures_util::stream::select_all(
        streams.into_iter().enumerate().map(|(i, s)| s.map(move |event| (i as u32, event)).boxed()),
    )
}

/// Server-sent events of JSON chunks, ended by `data: [DONE]`.
pub fn sse<S, T>(chunks: S) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    S: Stream<Item = T> + Send + 'static,
    T: Serialize,
{
    let events = chunks
        .map(|chunk| Event::default().data(serde_json::to_string(&chunk).expect("chunks serialize")))
        .chain(futures_util::stream::once(async { Event::default().data("[DONE]") }))
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// The text of one token on its own (for logprobs).
pub fn token_text(state: &AppState, token_id: u32) -> String {
    state.engine.tokenizer().decode(&[token_id], false).unwrap_or_default()
}

/// What one choice contributes to a streamed response.
pub enum ChoiceEvent {
    Token(TokenOutput),
    Finished(FinishReason),
}

/// The JSON chunks of a streamed response: `chunk` renders each choice's events; a failed request
/// becomes one error object in OpenAI's shape; with `usage` the last chunk carries the token
/// counts. `[DONE]` is added by `sse`.
pub fn chunk_stream<C, U>(
    streams: Vec<RequestStream>,
    prompt: PromptUsage,
    mut chunk: C,
    usage: Option<U>,
) -> impl Stream<Item = serde_json::Value> + Send
where
    C: FnMut(u32, ChoiceEvent) -> serde_json::Value + Send + 'static,
    U: FnOnce(Usage) -> serde_json::Value + Send + 'static,
{
    let completion_tokens = Arc::new(AtomicU32::new(0));
    let cached_tokens = Arc::new(AtomicUsize::new(0));
    let (counter, cached) = (completion_tokens.clone(), cached_tokens.clone());
    let mut failed = false;
    let events = merged(streams).filter_map(move |(index, event)| {
        let value = match event {
            TokenEvent::Token(token) => {
                counter.fetch_add(1, Ordering::Relaxed);
                Some(chunk(index, ChoiceEvent::Token(token)))
            }
            TokenEvent::Finished(done) => {
                if prompt.counts_cache_of(index) {
                    cached.fetch_add(done.num_cached_tokens, Ordering::Relaxed);
                }
                Some(chunk(index, ChoiceEvent::Finished(done.reason)))
            }
            // One error object, then the stream ends with [DONE] once every choice has ended.
            TokenEvent::Error(err) if !failed => {
                failed = true;
                Some(serde_json::to_value(ApiError::from(err).to_response_body()).expect("errors serialize"))
            }
            TokenEvent::Error(_) => None,
        };
        futures_util::future::ready(value)
    });
    let last = futures_util::stream::once(async move {
        let counts =
            prompt.usage(completion_tokens.load(Ordering::Relaxed), cached_tokens.load(Ordering::Relaxed));
        usage.map(|render| render(counts))
    })
    .filter_map(futures_util::future::ready);
    events.chain(last)
}
