//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `"list"` (`OBJECT_LIST`).
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The served model name, as requests name it.
    pub id: String,
    /// Always `"model"` (`OBJECT_MODEL`).
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// vLLM extension: the context length the server allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_list_round_trips_and_reads_openai_without_max_model_len() {
        let list = ModelList {
            object: "list".into(),
            data: vec![ModelCard {
                id: "tiny".into(),
                object: "model".into(),
                created: 5,
                owned_by: "tessera".into(),
                max_model_len: Some(2048),
            }],
        };
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["data"][0]["max_model_len"], json!(2048));
        assert_eq!(serde_json::from_value::<ModelList>(v).unwrap(), list);
        let openai = json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"}]});
        let parsed: ModelList = serde_json::from_value(openai).unwrap();
        assert_eq!(parsed.data[0].max_model_len, None);
        assert!(serde_json::to_value(&parsed).unwrap()["data"][0].get("max_model_len").is_none());
    }
}
