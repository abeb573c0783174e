//! Types that completions and chat share: usage, logprobs, stop strings, the error body.

use crate::request::FinishReason;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;

/// Token counts of one response (summed over its choices).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Tessera always sends it; other servers may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`, as OpenAI's API has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens found in the prefix cache, not computed again. Optional when read: some
    /// OpenAI-compatible servers send `{}` or `null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    pub fn with_cached_tokens(self, cached_tokens: u32) -> Self {
        Usage {
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: Some(cached_tokens) }),
            ..self
        }
    }

    /// Prompt tokens the server reported as prefix-cache hits; `None` when it did not say.
    pub fn cached_tokens(&self) -> Option<u32> {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens)
    }
}

/// `stream_options` of a streaming request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send one last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// `stop`: OpenAI accepts one string or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    /// The stop strings as a list, whichever form was sent.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

impl From<&str> for StopSpec {
    fn from(s: &str) -> Self {
        StopSpec::One(s.to_string())
    }
}

impl From<String> for StopSpec {
    fn from(s: String) -> Self {
        StopSpec::One(s)
    }
}

impl From<Vec<String>> for StopSpec {
    fn from(v: Vec<String>) -> Self {
        StopSpec::Many(v)
    }
}

impl From<Vec<&str>> for StopSpec {
    fn from(v: Vec<&str>) -> Self {
        StopSpec::Many(v.into_iter().map(str::to_string).collect())
    }
}

/// The OpenAI spelling of a finish reason (vLLM reports an aborted request as `"abort"`).
pub fn finish_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
        FinishReason::Abort => "abort",
    }
}

/// Legacy completions logprobs: parallel arrays, one entry per token.
///
/// `token_logprobs` and `top_logprobs` hold `None` where OpenAI sends `null`: the first prompt token
/// of an `echo`ed prompt has no logprob because nothing precedes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<u32>,
}

/// Chat logprobs: one entry per generated token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    /// OpenAI may send `null` here; read as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes of the token: a token may be part of a multi-byte character.
    pub bytes: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// The body of every error response: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    /// e.g. `invalid_request_error`, `authentication_error`, `server_error`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// The request field at fault, when there is one.
    #[serde(default)]
    pub param: Option<String>,
    /// vLLM sends the HTTP status as a number here, OpenAI a string; both read as a string.
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
}

impl ErrorResponse {
    pub fn new(r#type: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorResponse {
            error: ErrorBody { message: message.into(), r#type: r#type.into(), param: None, code: None },
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.error.code = Some(code.into());
        self
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.r#type, self.message)?;
        if let Some(param) = &self.param {
            write!(f, " (param: {param})")?;
        }
        Ok(())
    }
}

/// Reads `null` as the type's default, for fields OpenAI documents as arrays but sometimes nulls.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Text(String),
        Int(i64),
    }
    Ok(Option::<Code>::deserialize(d)?.map(|c| match c {
        Code::Text(s) => s,
        Code::Int(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_spec_accepts_string_or_array_and_rejects_others() {
        let one: StopSpec = serde_json::from_value(json!("\n")).unwrap();
        assert_eq!(one.clone().into_vec(), vec!["\n"]);
        let many: StopSpec = serde_json::from_value(json!(["a", "b"])).unwrap();
        assert_eq!(many.into_vec(), vec!["a", "b"]);
        assert_eq!(serde_json::to_value(&one).unwrap(), json!("\n"));
        let err = serde_json::from_value::<StopSpec>(json!(3)).unwrap_err();
        assert!(err.to_string().contains("a string or an array of strings"), "{err}");
    }

    #[test]
    fn error_round_trips_and_reads_vllm_numeric_code() {
        let e = ErrorResponse::new("invalid_request_error", "bad").with_param("temperature");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "bad", "type": "invalid_request_error",
                             "param": "temperature", "code": null}})
        );
        assert_eq!(serde_json::from_value::<ErrorResponse>(v).unwrap(), e);
        let vllm = json!({"object": "error", "message": "m", "type": "BadRequestError", "param": null,
                          "code": 400});
        let body: ErrorBody = serde_json::from_value(vllm).unwrap();
        assert_eq!(body.code.as_deref(), Some("400"));
        assert_eq!(body.to_string(), "BadRequestError: m");
    }

    #[test]
    fn chat_logprobs_read_null_content_as_empty() {
        let lp: ChatLogprobs = serde_json::from_value(json!({"content": null})).unwrap();
        assert!(lp.content.is_empty());
        let lp: ChatLogprobs = serde_json::from_value(json!({"content": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
             "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": null}]}
        ]}))
        .unwrap();
        assert_eq!(lp.content[0].bytes.as_deref(), Some(&b"Hi"[..]));
        assert_eq!(lp.content[0].top_logprobs[0].bytes, None);
    }

    #[test]
    fn usage_sums_and_finish_reasons_are_openai_strings() {
        assert_eq!(Usage::new(3, 4).total_tokens, 7);
        // prompt_tokens_details appears only when known, and reads back from OpenAI's shape.
        let plain = serde_json::to_value(Usage::new(3, 4)).unwrap();
        assert!(plain.get("prompt_tokens_details").is_none());
        let cached = serde_json::to_value(Usage::new(32, 4).with_cached_tokens(16)).unwrap();
        assert_eq!(cached["prompt_tokens_details"]["cached_tokens"], 16);
        let back: Usage = serde_json::from_value(cached).unwrap();
        assert_eq!(back.cached_tokens(), Some(16));
        assert_eq!(Usage::new(3, 4).cached_tokens(), None);
        // Other servers' shapes of the details read as "not said", not as an error.
        for details in [json!({}), json!({"cached_tokens": null}), json!(null)] {
            let usage: Usage = serde_json::from_value(
                json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": details}),
            )
            .unwrap();
            assert_eq!(usage.cached_tokens(), None);
        }
        assert_eq!(finish_reason_str(FinishReason::Length), "length");
        assert_eq!(finish_reason_str(FinishReason::Stop), "stop");
        assert_eq!(finish_reason_str(FinishReason::Abort), "abort");
    }
}
