//! Flags shared by every command that runs a model. Each flag is a shortcut for one config key
//! and becomes an override on top of defaults, file and environment.

use crate::settings::Override;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (model.path).
    #[arg(long, conflicts_with = "dummy")]
    pub model: Option<PathBuf>,
    /// Named shape with seeded random weights (model.load_format = dummy, model.dummy_shape):
    /// tiny, llama-3.2-1b, llama-3-8b, llama-3-70b, qwen2.5-7b, qwen3-8b.
    #[arg(long)]
    pub dummy: Option<String>,
    /// Where the model runs: cpu or cuda (device).
    #[arg(long)]
    pub device: Option<String>,
    /// Tensor-parallel ranks (parallel.tensor_parallel_size).
    #[arg(long)]
    pub tensor_parallel_size: Option<usize>,
    /// Context length limit (model.max_model_len).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Sequences per step at most (scheduler.max_num_seqs).
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
}

fn set(key: &str, value: impl Into<config::Value>) -> Override {
    (key.to_string(), value.into())
}

impl ModelArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        if let Some(path) = &self.model {
            out.push(set("model.path", path.display().to_string()));
        }
        if let Some(shape) = &self.dummy {
            out.push(set("model.load_format", "dummy"));
            out.push(set("model.dummy_shape", shape.as_str()));
            out.push(set("model.path", None::<String>));
        }
        if let Some(device) = &self.device {
            out.push(set("device", device.as_str()));
        }
        if let Some(n) = self.tensor_parallel_size {
            out.push(set("parallel.tensor_parallel_size", n as u64));
        }
        if let Some(n) = self.max_model_len {
            out.push(set("model.max_model_len", n as u64));
        }
        if let Some(n) = self.max_num_seqs {
            out.push(set("scheduler.max_num_seqs", n as u64));
        }
        out
    }
}
