//! Device selection: which worker group runs the model, and how many KV blocks each rank has.
//! The only place the engine branches on `device`.

use crate::actors::coordinator::WorkerGroupFactory;
use crate::cpu_group::CpuGroupFactory;
use crate::error::EngineError;
use crate::worker::ArmedFault;
use tessera_core::config::Device;
use tessera_core::EngineConfig;
use tessera_model::{KvCacheShape, ModelSpec};

// Declared here rather than in lib.rs: the CUDA group is only reachable through device selection.
#[cfg(feature = "cuda")]
#[path = "cuda_group.rs"]
mod cuda_group;
#[cfg(feature = "cuda")]
pub use cuda_group::cuda_rank_executor;

/// Supplies the worker group in place of device selection: a multi-node deployment, whose
/// ranks are partly in other processes (tessera-cluster).
pub trait GroupProvider: Send + Sync {
    fn provide(
        &self,
        config: &EngineConfig,
        spec: &ModelSpec,
        max_model_len: usize,
    ) -> Result<DeviceGroup, EngineError>;
}

/// A device's worker group and its KV cache size in blocks (the same on every rank).
pub struct DeviceGroup {
    pub factory: Box<dyn WorkerGroupFactory>,
    pub num_blocks: usize,
}

pub fn device_group(
    config: &EngineConfig,
    spec: &ModelSpec,
    max_model_len: usize,
    fault: Option<ArmedFault>,
) -> Result<DeviceGroup, EngineError> {
    match config.device {
        Device::Cpu => {
            let num_blocks = cpu_num_blocks(config, spec)?;
            let factory = CpuGroupFactory { config: config.clone(), num_blocks, max_model_len, fault };
            Ok(DeviceGroup { factory: Box::new(factory), num_blocks })
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let (factory, num_blocks) = cuda_group::CudaGroupFactory::start(config, max_model_len, fault)?;
            Ok(DeviceGroup { factory: Box::new(factory), num_blocks })
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => {
            let _ = fault;
            Err(EngineError::Startup(
                "device `cuda` needs a build with `--features cuda`; this binary has the CPU backend only"
                    .into(),
            ))
        }
    }
}

/// KV blocks per rank: from the config, else from the CPU cache budget.
pub fn cpu_num_blocks(config: &EngineConfig, spec: &ModelSpec) -> Result<usize, EngineError> {
    if let Some(n) = config.cache.num_blocks {
        return Ok(n);
    }
    let shape = KvCacheShape {
        num_layers: spec.num_layers,
        num_blocks: 1,
        block_size: config.cache.block_size,
        num_kv_heads: spec.num_kv_heads / config.parallel.tensor_parallel_size,
        head_dim: spec.head_dim,
    };
    let n = config.cache.cpu_kv_cache_bytes / shape.bytes_per_block(4);
    if n == 0 {
        return Err(EngineError::Startup("cache.cpu_kv_cache_bytes is smaller than one KV block".into()));
    }
    Ok(n)
}
