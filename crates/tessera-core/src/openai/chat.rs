//! `POST /v1/chat/completions`: requests, responses and streaming chunks.

use super::common::{null_as_default, ChatLogprobs, StopSpec, StreamOptions, Usage};
use super::{sampling_setters, setter};
use serde::{Deserialize, Serialize};

/// Who wrote a message. `developer` is OpenAI's newer name for `system`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    #[default]
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A message's `content`: a string, or an array of typed parts of which we accept text only (an
/// image part fails to parse, so the server can reject it rather than silently drop it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
}

impl MessageContent {
    /// The text of the message: the parts joined without a separator, as OpenAI concatenates them.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(s) => s.clone(),
            MessageContent::Parts(parts) => {
                parts.iter().map(|ContentPart::Text { text }| text.as_str()).collect()
            }
        }
    }
}

impl Default for MessageContent {
    fn default() -> Self {
        MessageContent::Text(String::new())
    }
}

impl<S: Into<String>> From<S> for MessageContent {
    fn from(s: S) -> Self {
        MessageContent::Text(s.into())
    }
}

/// One message of the conversation. Unknown fields (`tool_calls`, ...) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// An assistant message may send `null` (it carried tool calls); read as empty text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: MessageContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<MessageContent>) -> Self {
        ChatMessage { role, content: content.into(), name: None }
    }
    pub fn system(content: impl Into<MessageContent>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<MessageContent>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<MessageContent>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The body of `POST /v1/chat/completions`. Unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
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
    /// Return the chosen tokens' logprobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Alternatives per token (needs `logprobs: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
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

impl ChatCompletionRequest {
    /// A request with no messages yet and every optional field unset.
    pub fn new(model: impl Into<String>) -> Self {
        ChatCompletionRequest { model: model.into(), ..Default::default() }
    }

    /// Appends a message.
    pub fn message(mut self, message: ChatMessage) -> Self {
        self.messages.push(message);
        self
    }
    /// Appends a system message.
    pub fn system(self, content: impl Into<MessageContent>) -> Self {
        self.message(ChatMessage::system(content))
    }
    /// Appends a user message. (`user` sets OpenAI's end-user id field instead.)
    pub fn user_message(self, content: impl Into<MessageContent>) -> Self {
        self.message(ChatMessage::user(content))
    }
    /// Appends an assistant message.
    pub fn assistant(self, content: impl Into<MessageContent>) -> Self {
        self.message(ChatMessage::assistant(content))
    }

    setter!(max_completion_tokens: u32);
    setter!(logprobs: bool);
    setter!(top_logprobs: u32);
}

sampling_setters!(ChatCompletionRequest);

/// The body of a non-streaming chat response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `"chat.completion"` (`OBJECT_CHAT_COMPLETION`).
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatResponseMessage,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The generated message. `content` is `null` only when a server returns tool calls instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponseMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
}

/// One streamed chat event (`object: "chat.completion.chunk"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    /// Empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChatLogprobs>,
    /// Serialized as `null` until the choice ends, as OpenAI does.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What a chunk adds to the message: the role in the first chunk, then content pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{ChatTokenLogprob, TopLogprob};
    use serde_json::json;

    #[test]
    fn parses_an_openai_chat_request_with_parts_names_and_unknown_fields() {
        let body = r#"{
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "developer", "content": "x"}
            ],
            "max_completion_tokens": 32, "temperature": 0.7, "logprobs": true, "top_logprobs": 3,
            "stop": ["\n\n", "END"], "stream": false, "tools": [], "response_format": {"type": "text"},
            "top_k": 5, "priority": 2
        }"#;
        let req: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.messages.len(), 4);
        assert_eq!(req.messages[1].name.as_deref(), Some("ann"));
        assert_eq!(req.messages[1].content.text(), "Hello, world");
        assert_eq!(req.messages[2].content, MessageContent::Text(String::new()));
        assert_eq!(req.messages[3].role, Role::Developer);
        assert_eq!(req.max_completion_tokens, Some(32));
        assert_eq!(req.max_tokens, None);
        assert_eq!(req.logprobs, Some(true));
        assert_eq!(req.top_logprobs, Some(3));
        assert_eq!(req.stop.clone().map(StopSpec::into_vec), Some(vec!["\n\n".into(), "END".into()]));
        assert_eq!((req.top_k, req.priority), (Some(5), Some(2)));
    }

    #[test]
    fn rejects_non_text_parts_and_unknown_roles() {
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]});
        assert!(serde_json::from_value::<ChatCompletionRequest>(image).is_err());
        let role = json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]});
        assert!(serde_json::from_value::<ChatCompletionRequest>(role).is_err());
    }

    #[test]
    fn built_request_serializes_only_what_is_set() {
        let req = ChatCompletionRequest::new("tiny").system("s").user_message("hi").max_tokens(4).seed(7);
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            json!({"model": "tiny", "messages": [{"role": "system", "content": "s"},
                   {"role": "user", "content": "hi"}], "max_tokens": 4, "seed": 7})
        );
        assert_eq!(serde_json::from_value::<ChatCompletionRequest>(v).unwrap(), req);
    }

    #[test]
    fn response_round_trips_with_logprobs() {
        let resp = ChatCompletionResponse {
            id: "chatcmpl-1".into(),
            object: crate::openai::OBJECT_CHAT_COMPLETION.into(),
            created: 1,
            model: "tiny".into(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatResponseMessage { role: Role::Assistant, content: Some("Hi".into()) },
                logprobs: Some(ChatLogprobs {
                    content: vec![ChatTokenLogprob {
                        token: "Hi".into(),
                        logprob: -0.1,
                        bytes: Some(b"Hi".to_vec()),
                        top_logprobs: vec![TopLogprob { token: "Hi".into(), logprob: -0.1, bytes: None }],
                    }],
                }),
                finish_reason: Some("stop".into()),
            }],
            usage: Some(Usage::new(3, 1)),
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": "Hi"}));
        assert_eq!(v["choices"][0]["logprobs"]["content"][0]["bytes"], json!([72, 105]));
        assert_eq!(serde_json::from_value::<ChatCompletionResponse>(v).unwrap(), resp);
    }

    #[test]
    fn chunks_keep_finish_reason_null_and_omit_absent_delta_fields() {
        let first = ChatCompletionChunk {
            id: "c".into(),
            object: crate::openai::OBJECT_CHAT_COMPLETION_CHUNK.into(),
            created: 1,
            model: "tiny".into(),
            choices: vec![ChunkChoice {
                delta: Delta { role: Some(Role::Assistant), content: Some(String::new()) },
                ..Default::default()
            }],
            usage: None,
        };
        let v = serde_json::to_value(&first).unwrap();
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})
        );
        assert!(v.get("usage").is_none());
        assert_eq!(serde_json::from_value::<ChatCompletionChunk>(v).unwrap(), first);

        // OpenAI's final usage chunk, as sent with include_usage (note the extra fields).
        let last = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "system_fingerprint": "fp", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}});
        let last: ChatCompletionChunk = serde_json::from_value(last).unwrap();
        assert!(last.choices.is_empty());
        assert_eq!(last.usage, Some(Usage::new(9, 2)));
        let end = json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"});
        let end: ChunkChoice = serde_json::from_value(end).unwrap();
        assert_eq!((end.delta, end.finish_reason.as_deref()), (Delta::default(), Some("length")));
    }
}
