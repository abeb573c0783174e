//! A typed async client for a Tessera (or any OpenAI-compatible) server.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use std::time::Duration;
//! use tessera_client::{ChatCompletionRequest, Client, CompletionRequest};
//!
//! # async fn demo() -> Result<(), tessera_client::ClientError> {
//! let client = Client::builder("http://127.0.0.1:8000").api_key("k").timeout(Duration::from_secs(60)).build()?;
//! let resp = client.completions(CompletionRequest::new("tiny", "Hello").max_tokens(16).temperature(0.0)).await?;
//! println!("{}", resp.choices[0].text);
//!
//! let mut stream = client.chat_stream(ChatCompletionRequest::new("tiny").user_message("hi")).await?;
//! while let Some(chunk) = stream.next().await {
//!     for choice in chunk?.choices {
//!         print!("{}", choice.delta.content.unwrap_or_default());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The wire types are `tessera_core::openai`'s, re-exported here (and whole as `types`).
//! Architecture invariant: depends on `tessera-core`'s wire types only, never on the engine.

mod client;
mod error;
mod sse;

pub use client::{Client, ClientBuilder};
pub use error::ClientError;
pub use sse::{EventStream, SseDecoder, MAX_EVENT_BYTES};
pub use tessera_core::openai as types;
pub use tessera_core::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, CompletionChunk,
    CompletionRequest, CompletionResponse, DetokenizeRequest, DetokenizeResponse, ErrorBody, MessageContent,
    ModelList, Prompt, Role, StopSpec, StreamOptions, TokenizeRequest, TokenizeResponse, Usage,
};
