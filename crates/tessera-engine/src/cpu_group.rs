//! CPU worker groups: one thread per tensor-parallel rank, joined by an in-process `LocalGroup`.

use crate::actors::coordinator::WorkerGroupFactory;
use crate::worker::{ArmedFault, ExecutorFactoryArgs, ModelRunner, StepExecutor};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::EngineConfig;
use tessera_cpu::{CpuBackend, LocalGroup};
use tessera_model::{open_model, DType, Model, TpRank};

pub struct CpuGroupFactory {
    pub config: EngineConfig,
    pub num_blocks: usize,
    pub max_model_len: usize,
    /// Shared by every rebuild of the group, so an injected fault fires once.
    pub fault: Option<ArmedFault>,
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
                let factory = move || -> Result<Box<dyn StepExecutor>, String> {
                    let files = open_model(&config.model).map_err(|e| e.to_string())?;
                    let backend = CpuBackend::with_collective(Arc::new(comm));
                    // The CPU backend computes in f32 whatever the checkpoint stores.
                    let tp = TpRank { rank, world };
                    let model = Model::load(
                        &backend,
                        &files.spec,
                        files.source.as_ref(),
                        DType::F32,
                        tp,
                        max_model_len,
                    )
                    .map_err(|e| e.to_string())?;
                    let runner =
                        ModelRunner::new(backend, model, num_blocks, config.cache.block_size, rank == 0)?;
                    Ok(Box::new(runner))
                };
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
