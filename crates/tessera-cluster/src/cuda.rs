//! The GPU side of a multi-node group: NCCL carries the data. Each build the head creates a fresh
//! NCCL unique id and sends it to every remote rank in its `BuildRank`; every rank (head or
//! worker node) joins with `CudaBackend::new_in_group`, whose communicator warms up with
//! collectives over all ranks before any weight is loaded (the data plane's pre-flight check).
//! Poisoning a rank raises its build's abort signal, which aborts its communicator.
//!
//! Without the `cuda` feature every entry point says the build lacks it.

#[cfg(feature = "cuda")]
pub use gpu::{cluster_group, device_count, remote_rank};

#[cfg(not(feature = "cuda"))]
pub use cpu_only::{cluster_group, device_count, remote_rank};

#[cfg(not(feature = "cuda"))]
mod cpu_only {
    use crate::group::Remotes;
    use crate::node::Poison;
    use crate::wire::BuildRank;
    use tessera_core::EngineConfig;
    use tessera_engine::worker::ExecutorFactory;
    use tessera_engine::{DeviceGroup, EngineError};

    fn no_cuda() -> String {
        "device `cuda` needs a build with `--features cuda`; this binary has the CPU backend only".into()
    }

    pub fn device_count() -> Result<usize, String> {
        Err(no_cuda())
    }

    pub fn cluster_group(_remotes: Remotes, _max_model_len: usize) -> Result<DeviceGroup, EngineError> {
        Err(EngineError::Startup(no_cuda()))
    }

    pub fn remote_rank(
        _config: &EngineConfig,
        _build: &BuildRank,
        _id: &[u8],
    ) -> Result<(ExecutorFactory, Poison), String> {
        Err(no_cuda())
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use crate::group::{build_timeout, failed_build, layout, BuildFailure, Remotes};
    use crate::node::Poison;
    use crate::wire::{BuildRank, DataPlane};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tessera_core::EngineConfig;
    use tessera_cuda::{AbortSignal, CommConfig, NcclId};
    use tessera_engine::actors::coordinator::WorkerGroupFactory;
    use tessera_engine::worker::{ExecutorFactory, ExecutorFactoryArgs};
    use tessera_engine::{cuda_rank_executor, DeviceGroup, EngineError};

    pub fn device_count() -> Result<usize, String> {
        tessera_cuda::device_count().map_err(|e| e.to_string())
    }

    /// A rank's place in group `id`; remote ranks may join as late as a node can rejoin.
    fn comm_config(
        config: &EngineConfig,
        id: NcclId,
        rank: usize,
        world: usize,
        signal: AbortSignal,
    ) -> CommConfig {
        let timeout = Duration::from_millis(config.parallel.collective_timeout_ms);
        let mut comm = CommConfig::new(id, rank, world, timeout, signal);
        comm.init_timeout = build_timeout(config);
        comm
    }

    pub fn cluster_group(remotes: Remotes, max_model_len: usize) -> Result<DeviceGroup, EngineError> {
        let config = &remotes.config;
        let startup = EngineError::Startup;
        let num_blocks = config.cache.num_blocks.ok_or_else(|| {
            startup(
                "a multi-node group on `cuda` needs cache.num_blocks (KV blocks per rank): GPU memory is not \
                 profiled across nodes"
                    .into(),
            )
        })?;
        let head_ranks = config.cluster.node_ranks(config.parallel.tensor_parallel_size)[0];
        let gpus = device_count().map_err(startup)?;
        if gpus < head_ranks {
            return Err(startup(format!(
                "node 0 (head): device check failed: {head_ranks} ranks need {head_ranks} GPUs, the node has {gpus}"
            )));
        }
        let factory = NcclGroupFactory {
            remotes,
            num_blocks,
            max_model_len,
            epoch: AtomicU64::new(0),
            current: Mutex::default(),
        };
        Ok(DeviceGroup { factory: Box::new(factory), num_blocks })
    }

    struct NcclGroupFactory {
        remotes: Remotes,
        num_blocks: usize,
        max_model_len: usize,
        epoch: AtomicU64,
        /// The signal of the group built last; a rebuild raises it so stragglers give up.
        current: Mutex<Option<AbortSignal>>,
    }

    impl WorkerGroupFactory for NcclGroupFactory {
        fn build(&self) -> Vec<ExecutorFactoryArgs> {
            let config = &self.remotes.config;
            let world = config.parallel.tensor_parallel_size;
            let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            self.remotes.membership.start_group();
            let id = match NcclId::new() {
                Ok(id) => id,
                Err(e) => return failed_build(world, format!("creating the NCCL unique id: {e}")),
            };
            let signal = AbortSignal::new();
            if let Some(previous) =
                self.current.lock().unwrap_or_else(|e| e.into_inner()).replace(signal.clone())
            {
                previous.abort("the group is being rebuilt");
            }
            let failed: BuildFailure = {
                let signal = signal.clone();
                Arc::new(move || signal.reason())
            };
            let mut ranks = Vec::with_capacity(world);
            for (rank, node, local_index) in layout(config) {
                let factory: ExecutorFactory = if node == 0 {
                    let comm = comm_config(config, id, rank, world, signal.clone());
                    let (config, num_blocks, max_model_len) =
                        (config.clone(), self.num_blocks, self.max_model_len);
                    Box::new(move || {
                        cuda_rank_executor(&config, local_index, Some(&comm), num_blocks, max_model_len)
                    })
                } else {
                    let build = BuildRank {
                        epoch,
                        rank,
                        world,
                        local_index,
                        data_plane: DataPlane::Nccl { id: id.as_bytes().to_vec() },
                        num_blocks: self.num_blocks,
                        max_model_len: self.max_model_len,
                    };
                    self.remotes.factory(node, build, failed.clone())
                };
                let signal = signal.clone();
                ranks.push(ExecutorFactoryArgs {
                    rank,
                    factory,
                    poison: Box::new(move |r| signal.abort(r)),
                    fault: None,
                });
            }
            tracing::info!(epoch, world, "building the multi-node NCCL group");
            ranks
        }
    }

    /// A worker node's rank of group `id` on its GPU `build.local_index`.
    pub fn remote_rank(
        config: &EngineConfig,
        build: &BuildRank,
        id: &[u8],
    ) -> Result<(ExecutorFactory, Poison), String> {
        let id = NcclId::from_bytes(id).map_err(|e| format!("the head's NCCL id: {e}"))?;
        let signal = AbortSignal::new();
        let comm = comm_config(config, id, build.rank, build.world, signal.clone());
        let (config, ordinal, num_blocks, max_model_len) =
            (config.clone(), build.local_index, build.num_blocks, build.max_model_len);
        let factory: ExecutorFactory =
            Box::new(move || cuda_rank_executor(&config, ordinal, Some(&comm), num_blocks, max_model_len));
        Ok((factory, Box::new(move |reason: &str| signal.abort(reason))))
    }
}
