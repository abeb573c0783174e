//! CUDA worker groups: one OS thread per tensor-parallel rank, rank r on GPU r, the ranks joined
//! by NCCL (`tessera_cuda::NcclComm`).
//!
//! Startup loads every rank on its own thread: each joins the group first (so the ranks arrive
//! together), then loads its shard and, unless `cache.num_blocks` is set, profiles memory with
//! its collectives live, so NCCL's buffers count against the KV cache like any memory outside
//! the pool. The group's block count is the smallest of the ranks'. The loaded ranks go to the
//! first build, so the weights are read once.
//!
//! Each later build (a rebuild after a failure) gets a fresh NCCL id and `AbortSignal`, and
//! raises the previous build's signal, so ranks of the failed group still waiting give up.
//! Poisoning a rank raises its build's signal: every rank's next poll sees it, aborts its own
//! communicator (its collective kernels exit) and fails. A rank stuck outside NCCL (the hang
//! fault sleeps) keeps its GPU memory until its step returns, which a rebuild must fit beside.

use crate::actors::coordinator::WorkerGroupFactory;
use crate::error::EngineError;
use crate::worker::{ArmedFault, CudaAccel, DeviceAccel, ExecutorFactoryArgs, ModelRunner, StepExecutor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;
use tessera_core::config::WeightDtype;
use tessera_core::EngineConfig;
use tessera_cuda::{
    device_count, profile_num_blocks, AbortSignal, CommConfig, CudaBackend, NcclId, ProfileLimits,
    ProfileReport,
};
use tessera_model::{open_model, DType, Model, TpRank};

type Loaded = (CudaBackend, Model<CudaBackend>);

pub struct CudaGroupFactory {
    config: EngineConfig,
    num_blocks: usize,
    max_model_len: usize,
    fault: Option<ArmedFault>,
    /// The ranks loaded at startup and the signal their communicators watch; the first build
    /// takes them.
    preloaded: Mutex<Option<(Vec<Loaded>, AbortSignal)>>,
    /// The signal of the group built last (`None` before the first build).
    current: Mutex<Option<AbortSignal>>,
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

fn collective_timeout(config: &EngineConfig) -> Duration {
    Duration::from_millis(config.parallel.collective_timeout_ms)
}

/// One rank's backend on GPU `ordinal` (joined to its group when `comm` is given) and its shard.
fn load_rank(
    config: &EngineConfig,
    ordinal: usize,
    comm: Option<&CommConfig>,
    max_model_len: usize,
) -> Result<Loaded, String> {
    let backend = match comm {
        Some(comm) => CudaBackend::new_in_group(ordinal, comm),
        None => CudaBackend::new(ordinal),
    }
    .map_err(|e| e.to_string())?;
    let tp = comm.map_or(TpRank::SINGLE, |c| TpRank { rank: c.rank, world: c.world });
    let files = open_model(&config.model).map_err(|e| e.to_string())?;
    let model = Model::load(&backend, &files.spec, files.source.as_ref(), dtype(config), tp, max_model_len)
        .map_err(|e| e.to_string())?;
    // Ranks finish loading at different times; the first collectives must not count that against
    // the collective deadline.
    if let Some(comm) = comm {
        backend.wait_for_group(comm.init_timeout).map_err(|e| e.to_string())?;
    }
    Ok((backend, model))
}

/// A rank's executor on GPU `ordinal`, loading its shard on the calling (worker) thread; rank 0
/// samples. Used by the local group; a remote rank of a multi-node group (another process)
/// builds its executor the same way from the group's `CommConfig`.
pub fn cuda_rank_executor(
    config: &EngineConfig,
    ordinal: usize,
    comm: Option<&CommConfig>,
    num_blocks: usize,
    max_model_len: usize,
) -> Result<Box<dyn StepExecutor>, String> {
    let (backend, model) = load_rank(config, ordinal, comm, max_model_len)?;
    runner(config, backend, model, num_blocks)
}

fn runner(
    config: &EngineConfig,
    backend: CudaBackend,
    model: Model<CudaBackend>,
    num_blocks: usize,
) -> Result<Box<dyn StepExecutor>, String> {
    let samples = model.tp().rank == 0;
    let sizes = graph_batch_sizes(config);
    let chain = config.engine.decode_lookahead && model.tp().world == 1;
    let runner = ModelRunner::new(backend, model, num_blocks, config.cache.block_size, samples)?.with_accel(
        |backend, model, cache| {
            let accel: Box<dyn DeviceAccel<CudaBackend>> =
                Box::new(CudaAccel::capture(backend, model, cache, &sizes, chain)?);
            Ok(accel)
        },
    )?;
    Ok(Box::new(runner))
}

/// Each rank's `CommConfig` for a fresh group (none for one rank).
fn group_configs(config: &EngineConfig, signal: &AbortSignal) -> Result<Vec<Option<CommConfig>>, String> {
    let world = config.parallel.tensor_parallel_size;
    if world == 1 {
        return Ok(vec![None]);
    }
    let id = NcclId::new().map_err(|e| e.to_string())?;
    let timeout = collective_timeout(config);
    Ok((0..world).map(|rank| Some(CommConfig::new(id, rank, world, timeout, signal.clone()))).collect())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

impl CudaGroupFactory {
    /// Loads every rank (GPU r for rank r), sizes the KV cache (from `cache.num_blocks` or by
    /// profiling every rank), and returns the group's factory with the block count.
    pub fn start(
        config: &EngineConfig,
        max_model_len: usize,
        fault: Option<ArmedFault>,
    ) -> Result<(Self, usize), EngineError> {
        let world = config.parallel.tensor_parallel_size;
        let gpus = device_count().map_err(|e| EngineError::Startup(e.to_string()))?;
        if world > gpus {
            return Err(EngineError::Startup(format!(
                "parallel.tensor_parallel_size = {world} on device `cuda` needs {world} GPUs (one per rank); \
                 this machine has {gpus}"
            )));
        }
        let signal = AbortSignal::new();
        let comms = group_configs(config, &signal).map_err(EngineError::Startup)?;
        let limits = config.cache.num_blocks.is_none().then_some(ProfileLimits {
            max_num_batched_tokens: config.scheduler.max_num_batched_tokens,
            max_num_seqs: config.scheduler.max_num_seqs,
            max_model_len,
            block_size: config.cache.block_size,
            gpu_memory_utilization: config.cache.gpu_memory_utilization,
            max_graph_batch: graph_batch_sizes(config).last().copied().unwrap_or(0),
        });
        let outcomes: Vec<Result<(Loaded, Option<ProfileReport>), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .iter()
                .enumerate()
                .map(|(rank, comm)| {
                    let signal = &signal;
                    s.spawn(move || {
                        let attempt = catch_unwind(AssertUnwindSafe(|| {
                            let (backend, model) = load_rank(config, rank, comm.as_ref(), max_model_len)?;
                            let report = match &limits {
                                Some(limits) => Some(
                                    profile_num_blocks(&backend, &model, limits)
                                        .map_err(|e| format!("profiling GPU memory: {e}"))?,
                                ),
                                None => None,
                            };
                            Ok(((backend, model), report))
                        }));
                        let outcome = attempt
                            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(p.as_ref()))));
                        if let Err(err) = &outcome {
                            // The other ranks may be waiting for this one in a collective.
                            signal.abort(&format!("rank {rank} failed to start: {err}"));
                        }
                        outcome
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("rank startup threads catch panics")).collect()
        });
        if outcomes.iter().any(Result::is_err) {
            // The first failure raised the signal; the others are its consequences.
            let first = outcomes.into_iter().find_map(Result::err).expect("a rank failed");
            return Err(EngineError::Startup(signal.reason().unwrap_or(first)));
        }
        let (loaded, reports): (Vec<Loaded>, Vec<Option<ProfileReport>>) =
            outcomes.into_iter().map(|o| o.expect("checked above")).unzip();
        let num_blocks = match config.cache.num_blocks {
            Some(n) => n,
            None => {
                for (rank, report) in reports.iter().enumerate() {
                    tracing::info!(rank, ?report, gpu = %loaded[rank].0.device_name(), "KV cache sized by profiling");
                }
                reports.iter().flatten().map(|r| r.num_blocks).min().expect("every rank profiled")
            }
        };
        let factory = CudaGroupFactory {
            config: config.clone(),
            num_blocks,
            max_model_len,
            fault,
            preloaded: Mutex::new(Some((loaded, signal))),
            current: Mutex::new(None),
        };
        Ok((factory, num_blocks))
    }
}

impl WorkerGroupFactory for CudaGroupFactory {
    fn build(&self) -> Vec<ExecutorFactoryArgs> {
        let world = self.config.parallel.tensor_parallel_size;
        let preloaded = self.preloaded.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (mut loaded, signal): (Vec<Option<Loaded>>, AbortSignal) = match preloaded {
            Some((loaded, signal)) => (loaded.into_iter().map(Some).collect(), signal),
            None => ((0..world).map(|_| None).collect(), AbortSignal::new()),
        };
        let previous = self.current.lock().unwrap_or_else(|e| e.into_inner()).replace(signal.clone());
        if let Some(previous) = previous {
            previous.abort("the worker group was rebuilt");
        }
        // A rebuilt group gets a fresh NCCL id; if that fails every rank reports why.
        let comms: Result<Vec<Option<CommConfig>>, String> =
            if loaded[0].is_some() { Ok(vec![None; world]) } else { group_configs(&self.config, &signal) };
        (0..world)
            .map(|rank| {
                let (config, num_blocks, max_model_len) =
                    (self.config.clone(), self.num_blocks, self.max_model_len);
                let preloaded = loaded[rank].take();
                let comm = comms.as_ref().map(|c| c[rank].clone()).map_err(Clone::clone);
                let factory = move || -> Result<Box<dyn StepExecutor>, String> {
                    match preloaded {
                        Some((backend, model)) => runner(&config, backend, model, num_blocks),
                        None => cuda_rank_executor(&config, rank, comm?.as_ref(), num_blocks, max_model_len),
                    }
                };
                let poison_signal = signal.clone();
                ExecutorFactoryArgs {
                    rank,
                    factory: Box::new(factory),
                    poison: Box::new(move |reason| poison_signal.abort(reason)),
                    fault: self.fault.clone(),
                }
            })
            .collect()
    }
}
