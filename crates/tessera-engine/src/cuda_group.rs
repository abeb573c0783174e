//! CUDA worker groups: one thread per tensor-parallel rank, each owning the CUDA context and
//! stream of GPU `rank`. Tensor parallelism on CUDA needs NCCL (the next issue): until then a
//! group has one rank and a larger `tensor_parallel_size` is refused at startup.
//!
//! The KV cache is sized by profiling (`tessera_cuda::profile_num_blocks`), which needs the model
//! on the GPU; the rank that profiled hands its loaded model to the first build of the group, so
//! the weights are read once at startup.

use crate::actors::coordinator::WorkerGroupFactory;
use crate::error::EngineError;
use crate::worker::{ArmedFault, CudaAccel, DeviceAccel, ExecutorFactoryArgs, ModelRunner, StepExecutor};
use std::sync::{Arc, Mutex};
use tessera_core::config::WeightDtype;
use tessera_core::EngineConfig;
use tessera_cuda::{profile_num_blocks, CudaBackend, ProfileLimits};
use tessera_model::{open_model, DType, Model, TpRank};

type Loaded = (CudaBackend, Model<CudaBackend>);

pub struct CudaGroupFactory {
    config: EngineConfig,
    num_blocks: usize,
    max_model_len: usize,
    fault: Option<ArmedFault>,
    /// The model loaded for profiling, taken by the first build.
    preloaded: Arc<Mutex<Option<Loaded>>>,
}

/// bf16 unless the config asks otherwise: the kernels compute in bf16 whatever the weights are
/// stored as, so a wider dtype only changes the uploaded values' rounding.
fn dtype(config: &EngineConfig) -> DType {
    match config.model.dtype {
        WeightDtype::F16 => DType::F16,
        WeightDtype::F32 => DType::F32,
        WeightDtype::Auto | WeightDtype::Bf16 => DType::Bf16,
    }
}

/// The decode batch sizes captured as CUDA graphs (none when `engine.cuda_graphs` is off).
fn graph_batch_sizes(config: &EngineConfig) -> Vec<usize> {
    config.engine.graph_batch_sizes(config.scheduler.max_num_seqs)
}

fn load(config: &EngineConfig, rank: usize, max_model_len: usize) -> Result<Loaded, String> {
    let files = open_model(&config.model).map_err(|e| e.to_string())?;
    let backend = CudaBackend::new(rank).map_err(|e| e.to_string())?;
    let tp = TpRank { rank, world: 1 };
    let model = Model::load(&backend, &files.spec, files.source.as_ref(), dtype(config), tp, max_model_len)
        .map_err(|e| e.to_string())?;
    Ok((backend, model))
}

impl CudaGroupFactory {
    /// Loads the model on GPU 0, sizes the KV cache (from `cache.num_blocks` or by profiling),
    /// and returns the group's factory with the block count.
    pub fn start(
        config: &EngineConfig,
        max_model_len: usize,
        fault: Option<ArmedFault>,
    ) -> Result<(Self, usize), EngineError> {
        let world = config.parallel.tensor_parallel_size;
        if world != 1 {
            return Err(EngineError::Startup(format!(
                "parallel.tensor_parallel_size = {world} on device `cuda` needs NCCL collectives, which \
                 this build does not have yet; use 1"
            )));
        }
        let (backend, model) = load(config, 0, max_model_len).map_err(EngineError::Startup)?;
        let num_blocks = match config.cache.num_blocks {
            Some(n) => n,
            None => {
                let limits = ProfileLimits {
                    max_num_batched_tokens: config.scheduler.max_num_batched_tokens,
                    max_num_seqs: config.scheduler.max_num_seqs,
                    max_model_len,
                    block_size: config.cache.block_size,
                    gpu_memory_utilization: config.cache.gpu_memory_utilization,
                    max_graph_batch: graph_batch_sizes(config).last().copied().unwrap_or(0),
                };
                let report = profile_num_blocks(&backend, &model, &limits)
                    .map_err(|e| EngineError::Startup(format!("profiling GPU memory: {e}")))?;
                tracing::info!(?report, gpu = %backend.device_name(), "KV cache sized by profiling");
                report.num_blocks
            }
        };
        let factory = CudaGroupFactory {
            config: config.clone(),
            num_blocks,
            max_model_len,
            fault,
            preloaded: Arc::new(Mutex::new(Some((backend, model)))),
        };
        Ok((factory, num_blocks))
    }
}

impl WorkerGroupFactory for CudaGroupFactory {
    fn build(&self) -> Vec<ExecutorFactoryArgs> {
        let (config, num_blocks, max_model_len) = (self.config.clone(), self.num_blocks, self.max_model_len);
        let preloaded = self.preloaded.clone();
        let rank = 0;
        let factory = move || -> Result<Box<dyn StepExecutor>, String> {
            // A rebuilt group (after a failure) reloads: the old context's state is not trusted.
            let taken = preloaded.lock().map_err(|_| "preloaded model lock poisoned".to_string())?.take();
            let (backend, model) = match taken {
                Some(loaded) => loaded,
                None => load(&config, rank, max_model_len)?,
            };
            let sizes = graph_batch_sizes(&config);
            let runner = ModelRunner::new(backend, model, num_blocks, config.cache.block_size, true)?
                .with_accel(|backend, model, cache| {
                    let accel: Box<dyn DeviceAccel<CudaBackend>> =
                        Box::new(CudaAccel::capture(backend, model, cache, &sizes)?);
                    Ok(accel)
                })?;
            Ok(Box::new(runner))
        };
        vec![ExecutorFactoryArgs {
            rank,
            factory: Box::new(factory),
            // One rank, no collectives to poison.
            poison: Box::new(|_| {}),
            fault: self.fault.clone(),
        }]
    }
}
