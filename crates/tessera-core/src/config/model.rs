use super::{check, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the model math runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// How weights are obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadFormat {
    /// Safetensors when `path` is set, otherwise dummy weights.
    #[default]
    Auto,
    Safetensors,
    /// Seeded random weights: of the named `dummy_shape`, or of the shape in `path`'s config.json.
    Dummy,
}

/// The dtype weights are kept in on the device. The CPU backend always computes in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// As stored in the checkpoint (`torch_dtype`), bf16 for dummy weights.
    #[default]
    Auto,
    Bf16,
    F16,
    F32,
}

/// Which model to serve and how to load it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    pub path: Option<PathBuf>,
    pub load_format: LoadFormat,
    /// Named shape for dummy weights without files (`tiny`, `llama-3-8b`, ...).
    pub dummy_shape: String,
    /// Seed of dummy weights.
    pub seed: u64,
    pub dtype: WeightDtype,
    /// Context length limit; `None` takes the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Name the server reports; defaults to the directory name or the dummy shape.
    pub served_model_name: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            load_format: LoadFormat::Auto,
            dummy_shape: "tiny".to_string(),
            seed: 0,
            dtype: WeightDtype::Auto,
            max_model_len: None,
            served_model_name: None,
        }
    }
}

impl ModelConfig {
    /// True when weights are random rather than read from safetensors files.
    pub fn uses_dummy_weights(&self) -> bool {
        match self.load_format {
            LoadFormat::Dummy => true,
            LoadFormat::Safetensors => false,
            LoadFormat::Auto => self.path.is_none(),
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            self.load_format != LoadFormat::Safetensors || self.path.is_some(),
            || format!("{path}.path"),
            || "load_format = \"safetensors\" needs a model path".to_string(),
        )?;
        check(
            !self.dummy_shape.is_empty(),
            || format!("{path}.dummy_shape"),
            || "must not be empty".to_string(),
        )?;
        check(
            self.max_model_len != Some(0),
            || format!("{path}.max_model_len"),
            || "must be at least 1".to_string(),
        )
    }
}
