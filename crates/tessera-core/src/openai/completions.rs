//! `POST /v1/completions`: the legacy text completions API.

use super::common::{CompletionLogprobs, StopSpec, StreamOptions, Usage};
use super::{sampling_setters, setter};
use serde::{Deserialize, Serialize};

/// `prompt`: a string, a batch of strings, a token-id list, or a batch of token-id lists.
///
/// Variant order matters for `untagged`: `[]` reads as an empty batch of strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"
)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl Prompt {
    /// How many prompts (hence choice groups) this is.
    pub fn batch_len(&self) -> usize {
        match self {
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
            Prompt::Texts(v) => v.len(),
            Prompt::TokenBatches(v) => v.len(),
        }
    }
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<String>> for Prompt {
    fn from(v: Vec<String>) -> Self {
        Prompt::Texts(v)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(v: Vec<u32>) -> Self {
        Prompt::Tokens(v)
    }
}

impl From<Vec<Vec<u32>>> for Prompt {
    fn from(v: Vec<Vec<u32>>) -> Self {
        Prompt::TokenBatches(v)
    }
}

/// The body of `POST /v1/completions`. Unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Number of top alternatives to return per token (0 returns only the chosen token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Prepend the prompt to the returned text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    // vLLM extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

impl CompletionRequest {
    /// A request with every optional field unset (the server's defaults apply).
    pub fn new(model: impl Into<String>, prompt: impl Into<Prompt>) -> Self {
        CompletionRequest { model: model.into(), prompt: prompt.into(), ..Default::default() }
    }

    setter!(
        /// Top alternatives per token to return.
        logprobs: u32
    );
    setter!(echo: bool);
}

sampling_setters!(CompletionRequest);

/// The body of a non-streaming completions response, and (as `CompletionChunk`) of each streamed
/// event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    /// Always `"text_completion"` (`OBJECT_TEXT_COMPLETION`), streaming or not.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// In a stream, only the final usage chunk (with no choices) carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A streamed completions event has the same shape as the full response: each choice carries the
/// new text only.
pub type CompletionChunk = CompletionResponse;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    /// `null` unless logprobs were asked for, as OpenAI sends it.
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` until the choice's last event; then `"stop"`, `"length"` or `"abort"`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_accepts_every_openai_form() {
        let cases = [
            (json!("hi"), Prompt::Text("hi".into())),
            (json!(["a", "b"]), Prompt::Texts(vec!["a".into(), "b".into()])),
            (json!([1, 2, 3]), Prompt::Tokens(vec![1, 2, 3])),
            (json!([[1, 2], [3]]), Prompt::TokenBatches(vec![vec![1, 2], vec![3]])),
        ];
        for (value, expected) in cases {
            let prompt: Prompt = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(prompt, expected);
            assert_eq!(serde_json::to_value(&prompt).unwrap(), value);
        }
        assert_eq!(serde_json::from_value::<Prompt>(json!([[1], [2]])).unwrap().batch_len(), 2);
        let err = serde_json::from_value::<Prompt>(json!([-1])).unwrap_err();
        assert!(err.to_string().contains("array of token ids"), "{err}");
        assert!(serde_json::from_value::<Prompt>(json!({"text": "x"})).is_err());
    }

    #[test]
    fn parses_an_openai_python_request_with_vllm_extras_and_unknown_fields() {
        let body = r#"{
            "model": "meta-llama/Llama-3.1-8B", "prompt": "Say this is a test",
            "max_tokens": 7, "temperature": 0, "top_p": 1, "n": 1, "stream": true,
            "stream_options": {"include_usage": true}, "logprobs": 2, "echo": false,
            "stop": "\n", "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "user": "u1", "best_of": 1, "logit_bias": {"50256": -100}, "suffix": null,
            "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": true,
            "stop_token_ids": [2, 3], "priority": -1
        }"#;
        let req: CompletionRequest = serde_json::from_str(body).unwrap();
        let expected = CompletionRequest::new("meta-llama/Llama-3.1-8B", "Say this is a test")
            .max_tokens(7)
            .temperature(0.0)
            .top_p(1.0)
            .n(1)
            .stream(true)
            .stream_options(StreamOptions { include_usage: Some(true) })
            .logprobs(2)
            .echo(false)
            .stop("\n")
            .seed(42)
            .presence_penalty(0.5)
            .frequency_penalty(-0.5)
            .user("u1")
            .top_k(40)
            .min_p(0.05)
            .repetition_penalty(1.1)
            .ignore_eos(true)
            .stop_token_ids(vec![2, 3])
            .priority(-1);
        assert_eq!(req, expected);
    }

    #[test]
    fn minimal_request_leaves_options_unset_and_serializes_only_what_is_set() {
        let req: CompletionRequest = serde_json::from_value(json!({"model": "m", "prompt": [1, 2]})).unwrap();
        assert_eq!(req, CompletionRequest::new("m", vec![1u32, 2]));
        assert_eq!(req.max_tokens, None);
        let sent = serde_json::to_value(CompletionRequest::new("m", "x").max_tokens(3)).unwrap();
        assert_eq!(sent, json!({"model": "m", "prompt": "x", "max_tokens": 3}));
        assert!(serde_json::from_value::<CompletionRequest>(json!({"prompt": "x"})).is_err());
    }

    #[test]
    fn response_and_chunk_round_trip_in_openai_shape() {
        let resp = CompletionResponse {
            id: "cmpl-1".into(),
            object: super::super::OBJECT_TEXT_COMPLETION.into(),
            created: 1_700_000_000,
            model: "tiny".into(),
            choices: vec![CompletionChoice {
                index: 0,
                text: " a test".into(),
                logprobs: Some(CompletionLogprobs {
                    tokens: vec![" a".into(), " test".into()],
                    token_logprobs: vec![None, Some(-0.25)],
                    top_logprobs: vec![None, Some([(" test".to_string(), -0.25)].into())],
                    text_offset: vec![0, 2],
                }),
                finish_reason: Some("length".into()),
            }],
            usage: Some(Usage::new(5, 2)),
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["choices"][0]["logprobs"]["token_logprobs"], json!([null, -0.25]));
        assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}));
        assert_eq!(serde_json::from_value::<CompletionResponse>(v).unwrap(), resp);

        // A mid-stream chunk: finish_reason and logprobs are explicit nulls, usage is absent.
        let chunk = CompletionChunk {
            choices: vec![CompletionChoice { text: " a".into(), ..Default::default() }],
            usage: None,
            ..resp
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "text": " a", "logprobs": null, "finish_reason": null})
        );
        assert!(v.get("usage").is_none());
        assert_eq!(serde_json::from_value::<CompletionChunk>(v).unwrap(), chunk);
    }
}
