//! Flags shared by every command that runs a model. Each flag is a shortcut for a config key.

use clap::Args;
use std::path::PathBuf;
use tessera_core::config::{Device, EngineConfig, LoadFormat};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (model.path).
    #[arg(long, conflicts_with = "dummy")]
    pub model: Option<PathBuf>,
    /// Named shape with seeded random weights (model.dummy_shape): tiny, llama-3-8b, ...
    #[arg(long)]
    pub dummy: Option<String>,
    /// Where the model runs (device).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Tensor-parallel ranks (parallel.tensor_parallel_size).
    #[arg(long)]
    pub tensor_parallel_size: Option<usize>,
    /// Context length limit (model.max_model_len).
    #[arg(long)]
    pub max_model_len: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

impl ModelArgs {
    /// Lays the flags over `config`.
    pub fn apply(&self, config: &mut EngineConfig) {
        if let Some(path) = &self.model {
            config.model.path = Some(path.clone());
        }
        if let Some(shape) = &self.dummy {
            config.model.load_format = LoadFormat::Dummy;
            config.model.dummy_shape = shape.clone();
            config.model.path = None;
        }
        if let Some(device) = self.device {
            config.device = match device {
                DeviceArg::Cpu => Device::Cpu,
                DeviceArg::Cuda => Device::Cuda,
            };
        }
        if let Some(n) = self.tensor_parallel_size {
            config.parallel.tensor_parallel_size = n;
        }
        if let Some(len) = self.max_model_len {
            config.model.max_model_len = Some(len);
        }
    }
}
