//! CPU worker groups: one thread per tensor-parallel rank, joined by an in-process `LocalGroup`.

use crate::actors::coordinator::WorkerGroupFactory;
use crate::worker::{ArmedFault, ExecutorFactoryArgs, ModelRunner, StepExecutor};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::EngineConfig;
use tessera_cpu::{Collective, CpuBackend, LocalGroup};
use tessera_model::{open_model, DType, Model, TpRank};

pub struct CpuGroupFactory {
    pub config: EngineConfig,
    pub num_blocks: usize,
    pub max_model_len: usize,
    /// Shared by every rebuild of the group, so an injected fault fires once.
    pub fault: Option<ArmedFault>,
}

/// Loads rank `comm.rank()`'s shard on the CPU and wraps it in a `ModelRunner`; rank 0 samples.
/// Runs on the rank's worker thread. Used by `CpuGroupFactory` and by remote ranks of a
/// multi-node group, whose `comm` reaches other processes.
pub fn cpu_rank_executor(
    config: &EngineConfig,
    comm: Arc<dyn Collective>,
    num_blocks: usize,
    max_model_len: usize,
) -> Result<Box<dyn StepExecutor>, String> {
    let files = open_model(&config.model).map_err(|e| e.to_string())?;
    let tp = TpRank { rank: comm.rank(), world: comm.world() };
    let backend = CpuBackend::with_collective(comm);
    // The CPU backend computes in f32 whatever the checkpoint stores.
    let model = Model::load(&backend, &files.spec, files.source.as_ref(), DType::F32, tp, max_model_len)
        .map_err(|e| e.to_string())?;
    let runner = ModelRunner::new(backend, model, num_blocks, config.cache.block_size, tp.rank == 0)?;
    Ok(Box::new(runner))
}

impl WorkerGroupFactory for CpuGroupFactory {
    fn build(&self) -> Vec<ExecutorFactoryArgs> {
        let world = self.config.parallel.tensor_parallel_size;
        let group = LocalGroup::new(world, Duration::from_millis(self.config.parallel.collective_timeout_ms));
        group
            .ranks()
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let (config, num_blocks, max_model_len) =
                    (self.config.clone(), self.num_blocks, self.max_model_len);
                let poison_comm = comm.clone();
                let factory = move || cpu_rank_executor(&config, Arc::new(comm), num_blocks, max_model_len);
                ExecutorFactoryArgs {
                    rank,
                    factory: Box::new(factory),
                    poison: Box::new(move |reason| poison_comm.poison(reason)),
                    fault: self.fault.clone(),
                }
            })
            .collect()
    }
}
