//! vLLM's `POST /tokenize` and `POST /detokenize`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: String,
    /// Add the tokenizer's special tokens (BOS); vLLM's default is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: u32,
    pub max_model_len: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokenize_shapes_match_vllm() {
        let req: TokenizeRequest = serde_json::from_value(json!({"prompt": "hi"})).unwrap();
        assert_eq!(req, TokenizeRequest { model: None, prompt: "hi".into(), add_special_tokens: None });
        assert_eq!(serde_json::to_value(&req).unwrap(), json!({"prompt": "hi"}));
        let resp = TokenizeResponse { tokens: vec![1, 2], count: 2, max_model_len: 128 };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v, json!({"tokens": [1, 2], "count": 2, "max_model_len": 128}));
        assert_eq!(serde_json::from_value::<TokenizeResponse>(v).unwrap(), resp);
    }

    #[test]
    fn detokenize_shapes_match_vllm() {
        let req: DetokenizeRequest = serde_json::from_value(json!({"model": "m", "tokens": [5]})).unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        assert_eq!(req.tokens, vec![5]);
        assert!(serde_json::from_value::<DetokenizeRequest>(json!({"tokens": ["a"]})).is_err());
        let resp: DetokenizeResponse = serde_json::from_value(json!({"prompt": "hi"})).unwrap();
        assert_eq!(serde_json::to_value(&resp).unwrap(), json!({"prompt": "hi"}));
    }
}
