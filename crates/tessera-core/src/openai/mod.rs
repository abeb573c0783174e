//! OpenAI-compatible HTTP wire types (with vLLM's extensions), shared by the server and the client.
//!
//! Plain serde data, no IO. Request types accept and ignore unknown fields, because OpenAI client
//! libraries send parameters we do not implement; every optional request field is an `Option` so
//! the server applies its own defaults and can name the exact `param` it rejects. Response types
//! also ignore unknown fields, so the client can read any OpenAI-compatible server.
//!
//! Request types have chainable setters named after their fields, for building requests in code:
//! `CompletionRequest::new("tiny", "Hello").max_tokens(16).temperature(0.0)`.

pub mod chat;
pub mod common;
pub mod completions;
pub mod models;
pub mod tokenize;

pub use chat::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage,
    ChatResponseMessage, ChunkChoice, ContentPart, Delta, MessageContent, Role,
};
pub use common::{
    finish_reason_str, ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, ErrorBody, ErrorResponse,
    PromptTokensDetails, StopSpec, StreamOptions, TopLogprob, Usage,
};
pub use completions::{CompletionChoice, CompletionChunk, CompletionRequest, CompletionResponse, Prompt};
pub use models::{ModelCard, ModelList};
pub use tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};

/// `object` of a `CompletionResponse` and of its streaming chunks.
pub const OBJECT_TEXT_COMPLETION: &str = "text_completion";
/// `object` of a `ChatCompletionResponse`.
pub const OBJECT_CHAT_COMPLETION: &str = "chat.completion";
/// `object` of a `ChatCompletionChunk`.
pub const OBJECT_CHAT_COMPLETION_CHUNK: &str = "chat.completion.chunk";
/// `object` of a `ModelList`.
pub const OBJECT_LIST: &str = "list";
/// `object` of a `ModelCard`.
pub const OBJECT_MODEL: &str = "model";

/// Chainable setters for the sampling fields that completions and chat requests share, so both
/// request types stay in step when a parameter is added.
macro_rules! sampling_setters {
    ($ty:ty) => {
        impl $ty {
            setter!(
                /// Upper bound on generated tokens.
                max_tokens: u32
            );
            setter!(temperature: f32);
            setter!(top_p: f32);
            setter!(
                /// Number of choices to generate.
                n: u32
            );
            setter!(stream: bool);
            setter!(stream_options: $crate::openai::StreamOptions);
            setter!(seed: u64);
            setter!(presence_penalty: f32);
            setter!(frequency_penalty: f32);
            setter!(user: into String);
            setter!(
                /// vLLM extension: keep the `k` most likely tokens (0 disables).
                top_k: u32
            );
            setter!(
                /// vLLM extension.
                min_p: f32
            );
            setter!(
                /// vLLM extension.
                repetition_penalty: f32
            );
            setter!(
                /// vLLM extension: keep generating after an end-of-sequence token.
                ignore_eos: bool
            );
            setter!(
                /// vLLM extension: token ids that end generation.
                stop_token_ids: into Vec<u32>
            );
            setter!(
                /// vLLM extension: lower is more urgent.
                priority: i32
            );

            /// Stop strings (one or several).
            pub fn stop(mut self, stop: impl Into<$crate::openai::StopSpec>) -> Self {
                self.stop = Some(stop.into());
                self
            }
        }
    };
}

/// One chainable setter: `fn name(self, value) -> Self` storing `Some(value)`. Numbers take their
/// exact type (so `max_tokens(16)` infers the literal); `into` setters take `impl Into<T>`.
macro_rules! setter {
    ($(#[$doc:meta])* $name:ident : into $t:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<$t>) -> Self {
            self.$name = Some(value.into());
            self
        }
    };
    ($(#[$doc:meta])* $name:ident : $t:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = Some(value);
            self
        }
    };
}

use {sampling_setters, setter};
