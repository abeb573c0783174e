//! A request's event stream. Raw token ids arrive from the scheduler; this side detokenizes them
//! incrementally and matches stop strings, so that text work stays off the engine's loop.
//! Exactly one terminal event (`Finished` or `Error`) ends every stream; dropping the stream
//! before that aborts the request.

use crate::actors::scheduler::{RawEvent, SchedulerMsg};
use crate::detokenizer::IncrementalDetokenizer;
use crate::error::EngineError;
use crate::stop::{StopOutcome, StopStringMatcher};
use ractor::ActorRef;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tessera_core::step::TokenLogprobs;
use tessera_core::{FinishReason, RequestId};
use tessera_model::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Clone, Debug, PartialEq)]
pub struct TokenOutput {
    pub token_id: u32,
    /// Text completed by this token; may be empty (the token ends mid-character, or the text
    /// might begin a stop string and is held back).
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub reason: FinishReason,
    pub num_prompt_tokens: usize,
    /// Prompt tokens the prefix cache held when the request was first scheduled (0 if it never was).
    pub num_cached_tokens: usize,
    pub num_output_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TokenEvent {
    Token(TokenOutput),
    Finished(Completion),
    Error(EngineError),
}

impl TokenEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, TokenEvent::Token(_))
    }
}

pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<RawEvent>,
    scheduler: ActorRef<SchedulerMsg>,
    tokenizer: Arc<Tokenizer>,
    detokenizer: IncrementalDetokenizer,
    stop: StopStringMatcher,
    num_prompt_tokens: usize,
    num_cached_tokens: usize,
    num_output_tokens: usize,
    ready: VecDeque<TokenEvent>,
    /// The terminal event has been queued; nothing more will be read.
    ended: bool,
}

impl RequestStream {
    pub(crate) fn new(
        id: RequestId,
        rx: UnboundedReceiver<RawEvent>,
        scheduler: ActorRef<SchedulerMsg>,
        tokenizer: Arc<Tokenizer>,
        prompt_token_ids: &[u32],
        stop: &[String],
    ) -> Self {
        RequestStream {
            id,
            rx,
            scheduler,
            tokenizer,
            detokenizer: IncrementalDetokenizer::new(prompt_token_ids),
            stop: StopStringMatcher::new(stop),
            num_prompt_tokens: prompt_token_ids.len(),
            num_cached_tokens: 0,
            num_output_tokens: 0,
            ready: VecDeque::new(),
            ended: false,
        }
    }

    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn finished(&self, reason: FinishReason) -> TokenEvent {
        TokenEvent::Finished(Completion {
            reason,
            num_prompt_tokens: self.num_prompt_tokens,
            num_cached_tokens: self.num_cached_tokens,
            num_output_tokens: self.num_output_tokens,
        })
    }

    fn end(&mut self, event: TokenEvent) {
        self.ready.push_back(event);
        self.ended = true;
        self.rx.close();
    }

    fn on_token(&mut self, token_id: u32, logprobs: Option<TokenLogprobs>, finish: Option<FinishReason>) {
        self.num_output_tokens += 1;
        let mut text = match self.detokenizer.push(&self.tokenizer, token_id) {
            Ok(text) => text,
            Err(err) => {
                let _ = self.scheduler.cast(SchedulerMsg::Abort(self.id));
                return self
                    .end(TokenEvent::Error(EngineError::InvalidRequest(format!("detokenizing: {err}"))));
            }
        };
        if finish.is_some() {
            text.push_str(&self.detokenizer.flush(&self.tokenizer).unwrap_or_default());
        }
        match self.stop.push(&text) {
            StopOutcome::Stopped { emit } => {
                if finish.is_none() {
                    // The scheduler does not know yet: end the request there too.
                    let _ = self.scheduler.cast(SchedulerMsg::Finish(self.id, FinishReason::Stop));
                }
                self.ready.push_back(TokenEvent::Token(TokenOutput { token_id, text: emit, logprobs }));
                self.end(self.finished(FinishReason::Stop));
            }
            StopOutcome::Continue { mut emit } => {
                if finish.is_some() {
                    emit.push_str(&self.stop.finish());
                }
                self.ready.push_back(TokenEvent::Token(TokenOutput { token_id, text: emit, logprobs }));
                if let Some(reason) = finish {
                    self.end(self.finished(reason));
                }
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(RawEvent::Admitted { num_cached_tokens })) => {
                    self.num_cached_tokens = num_cached_tokens
                }
                Poll::Ready(Some(RawEvent::Token { token_id, logprobs, finish })) => {
                    self.on_token(token_id, logprobs, finish)
                }
                Poll::Ready(Some(RawEvent::Aborted)) => self.end(self.finished(FinishReason::Abort)),
                Poll::Ready(Some(RawEvent::Failed(err))) => self.end(TokenEvent::Error(err)),
                Poll::Ready(None) => {
                    let err = EngineError::Unavailable("the engine stopped before the request ended".into());
                    self.end(TokenEvent::Error(err));
                }
            }
        }
    }
}

impl futures_core::Stream for RequestStream {
    type Item = TokenEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.scheduler.cast(SchedulerMsg::Abort(self.id));
        }
    }
}
