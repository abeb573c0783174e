//! The model's shape and hyper-parameters, parsed from a Hugging Face `config.json`.
//!
//! Parsing goes through `serde_json::Value` rather than a derived struct so that every error names
//! the file and the exact field, and so that both the transformers v4 spelling (`rope_theta`,
//! `rope_scaling`, `torch_dtype`) and the v5 one (`rope_parameters`, `dtype`) are accepted.

use crate::error::{ModelError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The architectures of the Llama family that one model definition covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    const ALL: [(&'static str, Architecture); 4] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("MistralForCausalLM", Architecture::Mistral),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
        ("Qwen3ForCausalLM", Architecture::Qwen3),
    ];

    pub fn hf_name(self) -> &'static str {
        Self::ALL.iter().find(|(_, a)| *a == self).map(|(n, _)| *n).expect("every variant is listed")
    }
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    pub llama3_scaling: Option<Llama3RopeScaling>,
}

/// Element type of stored weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
}

/// Everything the model definition needs to know about a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeSpec,
    /// Longest context the model supports (capped by a sliding window, which we do not implement).
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's stored dtype, if it says.
    pub dtype: Option<DType>,
}

impl ModelSpec {
    /// Parses `dir/config.json`, then takes eos ids from `dir/generation_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let mut spec = Self::from_json(&path, &read_json(&path)?)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen = read_json(&gen_path)?;
            let fields = ConfigFields { path: &gen_path, map: as_object(&gen_path, &gen)? };
            if let Some(ids) = fields.token_ids("eos_token_id")? {
                spec.eos_token_ids = ids;
            }
            if let Some(ids) = fields.token_ids("bos_token_id")? {
                spec.bos_token_id = ids.first().copied();
            }
        }
        Ok(spec)
    }

    /// Parses a config.json already read; `path` is only used in error messages.
    pub fn from_json(path: &Path, json: &Value) -> Result<Self> {
        let f = ConfigFields { path, map: as_object(path, json)? };
        let architecture = f.architecture()?;
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads.max(1));
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(f.invalid(
                "num_key_value_heads",
                format!("{num_kv_heads} must be positive and divide num_attention_heads ({num_heads})"),
            ));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.invalid("head_dim", format!("must be a positive even number, got {head_dim}")));
        }
        if f.opt_bool("mlp_bias")?.unwrap_or(false) {
            return Err(f.invalid("mlp_bias", "bias on MLP projections is not supported".into()));
        }
        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(f.invalid("hidden_act", format!("only `silu` is supported, got `{act}`")));
            }
        }
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let mut max_position_embeddings = f.usize("max_position_embeddings")?;
        if let Some(window) = f.sliding_window(architecture)? {
            // Within the window, sliding-window attention equals full attention, so capping the
            // context at the window keeps results exact without implementing the window.
            max_position_embeddings = max_position_embeddings.min(window);
        }
        Ok(ModelSpec {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope: f.rope()?,
            max_position_embeddings,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: f.token_ids("bos_token_id")?.and_then(|ids| ids.first().copied()),
            eos_token_ids: f.token_ids("eos_token_id")?.unwrap_or_default(),
            dtype: f.dtype()?,
        })
    }

    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count (embeddings and lm_head included), for memory planning and reports.
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let attn = h * (self.q_size() + 2 * self.kv_size()) + self.q_size() * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let lm_head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers * per_layer + embed + lm_head + h
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.into(), source })
}

fn as_object<'a>(path: &Path, json: &'a Value) -> Result<&'a Map<String, Value>> {
    json.as_object().ok_or_else(|| ModelError::InvalidField {
        path: path.into(),
        field: "(root)".into(),
        message: "expected a JSON object".into(),
    })
}

/// Typed access to a config object with errors that name the file and field.
struct ConfigFields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl ConfigFields<'_> {
    fn invalid(&self, field: &str, message: String) -> ModelError {
        ModelError::InvalidField { path: PathBuf::from(self.path), field: field.into(), message }
    }

    fn present(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.invalid(field, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| ModelError::MissingField { path: self.path.into(), field: field.into() })
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| self.invalid(field, format!("expected a number, got {v}")))
            }
        }
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("expected a boolean, got {v}"))),
        }
    }

    fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => {
                v.as_str().map(Some).ok_or_else(|| self.invalid(field, format!("expected a string, got {v}")))
            }
        }
    }

    /// A token id field that may be a single integer or a list of them.
    fn token_ids(&self, field: &str) -> Result<Option<Vec<u32>>> {
        let bad = |v: &Value| self.invalid(field, format!("expected a token id or a list of them, got {v}"));
        match self.present(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
                .collect::<Result<_>>()
                .map(Some),
            Some(v) => v.as_u64().map(|n| Some(vec![n as u32])).ok_or_else(|| bad(v)),
        }
    }

    fn architecture(&self) -> Result<Architecture> {
        let field = "architectures";
        let names = self
            .present(field)
            .ok_or_else(|| ModelError::MissingField { path: self.path.into(), field: field.into() })?;
        let name = names.as_array().and_then(|a| a.first()).and_then(Value::as_str).ok_or_else(|| {
            self.invalid(field, format!("expected a list of architecture names, got {names}"))
        })?;
        Architecture::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                path: self.path.into(),
                architecture: name.into(),
                supported: Architecture::ALL.map(|(n, _)| n).join(", "),
            }
        })
    }

    fn sliding_window(&self, architecture: Architecture) -> Result<Option<usize>> {
        // Qwen2/3 configs carry a window that only applies when `use_sliding_window` is true.
        if matches!(architecture, Architecture::Qwen2 | Architecture::Qwen3)
            && !self.opt_bool("use_sliding_window")?.unwrap_or(false)
        {
            return Ok(None);
        }
        self.opt_usize("sliding_window")
    }

    fn dtype(&self) -> Result<Option<DType>> {
        let field = if self.present("dtype").is_some() { "dtype" } else { "torch_dtype" };
        Ok(match self.opt_str(field)? {
            None => None,
            Some("float32") => Some(DType::F32),
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::Bf16),
            Some(other) => return Err(self.invalid(field, format!("unsupported dtype `{other}`"))),
        })
    }

    /// RoPE from `rope_parameters` (transformers v5) or `rope_theta` + `rope_scaling` (v4).
    fn rope(&self) -> Result<RopeSpec> {
        let (field, params) = match self.present("rope_parameters") {
            Some(p) => ("rope_parameters", Some(p)),
            None => ("rope_scaling", self.present("rope_scaling")),
        };
        let params = match params {
            None => None,
            Some(p) => Some(ConfigFields {
                path: self.path,
                map: p
                    .as_object()
                    .ok_or_else(|| self.invalid(field, format!("expected an object, got {p}")))?,
            }),
        };
        let theta = match params.as_ref().map(|p| p.opt_f64("rope_theta")).transpose()?.flatten() {
            Some(theta) => theta,
            None => self.opt_f64("rope_theta")?.unwrap_or(10_000.0),
        } as f32;
        let Some(p) = params else { return Ok(RopeSpec { theta, llama3_scaling: None }) };
        let kind = match p.opt_str("rope_type")? {
            Some(kind) => Some(kind),
            None => p.opt_str("type")?,
        };
        let sub = |name: &str| format!("{field}.{name}");
        let need = |name: &str| -> Result<f64> {
            p.opt_f64(name)?
                .ok_or_else(|| ModelError::MissingField { path: self.path.into(), field: sub(name) })
        };
        match kind.unwrap_or("default") {
            "default" => Ok(RopeSpec { theta, llama3_scaling: None }),
            "llama3" => Ok(RopeSpec {
                theta,
                llama3_scaling: Some(Llama3RopeScaling {
                    factor: need("factor")? as f32,
                    low_freq_factor: need("low_freq_factor")? as f32,
                    high_freq_factor: need("high_freq_factor")? as f32,
                    original_max_position_embeddings: p
                        .opt_usize("original_max_position_embeddings")?
                        .ok_or_else(|| ModelError::MissingField {
                            path: self.path.into(),
                            field: sub("original_max_position_embeddings"),
                        })?,
                }),
            }),
            other => Err(self.invalid(&sub("rope_type"), format!("unsupported RoPE type `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_json() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
            "vocab_size": 300, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "eos_token_id": [1, 2], "torch_dtype": "float32",
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        })
    }

    #[test]
    fn parses_llama3_with_rope_scaling() {
        let spec = ModelSpec::from_json(Path::new("config.json"), &llama_json()).unwrap();
        assert_eq!(spec.architecture, Architecture::Llama);
        assert_eq!((spec.num_heads, spec.num_kv_heads, spec.head_dim), (8, 4, 8));
        assert_eq!(spec.eos_token_ids, vec![1, 2]);
        assert_eq!(spec.rope.theta, 500000.0);
        assert_eq!(spec.rope.llama3_scaling.as_ref().unwrap().original_max_position_embeddings, 32);
        assert_eq!(spec.dtype, Some(DType::F32));
    }

    #[test]
    fn parses_transformers_v5_rope_parameters() {
        let mut json = llama_json();
        let map = json.as_object_mut().unwrap();
        let mut params = map.remove("rope_scaling").unwrap();
        params["rope_theta"] = json!(1000.0);
        map.remove("rope_theta");
        map.insert("rope_parameters".into(), params);
        let spec = ModelSpec::from_json(Path::new("config.json"), &json).unwrap();
        assert_eq!(spec.rope.theta, 1000.0);
        assert_eq!(spec.rope.llama3_scaling.unwrap().factor, 8.0);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let path = Path::new("/models/x/config.json");
        let mut json = llama_json();
        json["architectures"] = json!(["GPT2LMHeadModel"]);
        let err = ModelSpec::from_json(path, &json).unwrap_err().to_string();
        assert!(err.contains("/models/x/config.json") && err.contains("GPT2LMHeadModel"), "{err}");

        let mut json = llama_json();
        json.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelSpec::from_json(path, &json).unwrap_err().to_string();
        assert!(err.contains("missing field `hidden_size`"), "{err}");

        let mut json = llama_json();
        json["rope_scaling"]["rope_type"] = json!("yarn");
        let err = ModelSpec::from_json(path, &json).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.rope_type") && err.contains("yarn"), "{err}");

        let mut json = llama_json();
        json["num_key_value_heads"] = json!(3);
        let err = ModelSpec::from_json(path, &json).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_ignores_unused_window() {
        let mut json = llama_json();
        json["architectures"] = json!(["Qwen2ForCausalLM"]);
        json["sliding_window"] = json!(16);
        json["use_sliding_window"] = json!(false);
        let spec = ModelSpec::from_json(Path::new("c"), &json).unwrap();
        assert!(spec.qkv_bias && !spec.o_bias);
        assert_eq!(spec.max_position_embeddings, 256);
    }

    #[test]
    fn mistral_window_caps_the_context() {
        let mut json = llama_json();
        json["architectures"] = json!(["MistralForCausalLM"]);
        json["sliding_window"] = json!(128);
        let spec = ModelSpec::from_json(Path::new("c"), &json).unwrap();
        assert_eq!(spec.max_position_embeddings, 128);
    }
}
