//! The worker group of a multi-node deployment, as the head's coordinator sees it: the head's own
//! ranks run as usual, each remote rank is a local `RemoteRank` proxy on its own worker thread,
//! so the coordinator and its supervision are unchanged. Every build is a new group `epoch` with
//! a fresh data plane (a new TCP hub and token here; a new NCCL id in `cuda.rs`), and every rank,
//! local or remote, proves the data plane with a tiny all-reduce before it loads any weight.

use crate::membership::Membership;
use crate::proxy::{block_on_until, RemoteRank};
use crate::wire::{BuildRank, DataPlane, NodeMsg};
use ractor::rpc::CallResult;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_core::config::{Device, OnNodeFailure};
use tessera_core::EngineConfig;
use tessera_cpu::{Collective, TcpComm, TcpHub, TcpPoison};
use tessera_engine::actors::coordinator::WorkerGroupFactory;
use tessera_engine::worker::{ExecutorFactory, ExecutorFactoryArgs, StepExecutor};
use tessera_engine::{cpu_num_blocks, cpu_rank_executor, DeviceGroup, EngineError, GroupProvider};
use tessera_model::ModelSpec;
use tokio::runtime::Handle;

/// The pre-flight check of the data plane: every rank contributes `[1, rank]`; every rank must
/// get `[world, world * (world - 1) / 2]` back.
pub fn check_data_plane(comm: &dyn Collective) -> Result<(), String> {
    let (rank, world) = (comm.rank(), comm.world());
    let mut probe = [1.0f32, rank as f32];
    comm.all_reduce_sum(&mut probe).map_err(|e| format!("rank {rank}: data plane check failed: {e}"))?;
    let want = [world as f32, (world * (world - 1) / 2) as f32];
    if probe != want {
        return Err(format!(
            "rank {rank}: data plane check failed: all-reduce gave {probe:?}, expected {want:?}"
        ));
    }
    Ok(())
}

/// A CPU rank over the TCP data plane: connect, check, then load the shard.
pub fn tcp_rank_executor(
    config: &EngineConfig,
    connect: impl FnOnce() -> Result<TcpComm, String>,
    num_blocks: usize,
    max_model_len: usize,
) -> Result<Box<dyn StepExecutor>, String> {
    let comm = connect()?;
    check_data_plane(&comm)?;
    cpu_rank_executor(config, Arc::new(comm), num_blocks, max_model_len)
}

/// How long group builds may wait: for peers to connect, or (on a rebuild) for a lost node to
/// rejoin.
pub fn build_timeout(config: &EngineConfig) -> Duration {
    Duration::from_millis(config.cluster.join_timeout_ms)
}

/// Why a group build failed, if it did: the TCP poison or the NCCL abort signal, as the proxies
/// of that build see it.
pub type BuildFailure = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Every rank's place: `(rank, node, index on its node)`, head first.
pub fn layout(config: &EngineConfig) -> Vec<(usize, usize, usize)> {
    let node_ranks = config.cluster.node_ranks(config.parallel.tensor_parallel_size);
    let mut out = Vec::new();
    for (node, &count) in node_ranks.iter().enumerate() {
        for local_index in 0..count {
            out.push((out.len(), node, local_index));
        }
    }
    out
}

/// What remote-rank factories need from the head.
#[derive(Clone)]
pub struct Remotes {
    pub config: EngineConfig,
    pub membership: Arc<Membership>,
    pub runtime: Handle,
}

impl Remotes {
    /// Rank `build.rank` on `node`: wait until the node is ready, have it start the rank, and
    /// proxy it. With `on_node_failure = "wait"`, a node lost before its rank started is waited
    /// for again (a rebuild right after a loss may still see the old incarnation as ready).
    pub fn factory(&self, node: usize, build: BuildRank, failed: BuildFailure) -> ExecutorFactory {
        let Remotes { config, membership, runtime } = self.clone();
        let timeout = build_timeout(&config);
        let step_timeout = Duration::from_millis(config.engine.step_timeout_ms);
        let retry = config.cluster.on_node_failure == OnNodeFailure::Wait;
        Box::new(move || {
            let (rank, epoch) = (build.rank, build.epoch);
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let stop = || failed().map(|r| format!("group failed while rank {rank} waited: {r}"));
                // With "exit" a lost node is not waited for: the head is on its way out.
                let wait = if retry { left } else { Duration::ZERO };
                let ready = membership.wait_ready(&runtime, node, wait, stop)?;
                let call = ready.actor.call(|reply| NodeMsg::Build(build.clone(), reply), Some(left));
                let lost =
                    match block_on_until(&runtime, call, &membership, node, ready.incarnation, Some(&failed))
                    {
                        Ok(CallResult::Success(Ok(()))) => {
                            membership.joined_group(node, ready.incarnation);
                            let proxy =
                                RemoteRank::new(node, rank, epoch, ready, membership, runtime, step_timeout);
                            return Ok(Box::new(proxy) as Box<dyn StepExecutor>);
                        }
                        Ok(CallResult::Success(Err(err))) => return Err(format!("node {node}: {err}")),
                        Ok(CallResult::Timeout) => {
                            return Err(format!(
                                "node {node}: rank {rank} did not start within {} ms",
                                left.as_millis()
                            ))
                        }
                        Ok(CallResult::SenderError) => {
                            format!("node {node}: dropped the build of rank {rank}")
                        }
                        Err(err) => err,
                    };
                if !retry || failed().is_some() || Instant::now() >= deadline {
                    return Err(lost);
                }
                tracing::warn!(node, rank, reason = %lost, "waiting for the node to rejoin");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }
}

/// Plugged into `EngineOptions::group` by `tessera serve`.
pub struct ClusterGroupProvider {
    membership: Arc<Membership>,
}

impl ClusterGroupProvider {
    pub fn new(membership: Arc<Membership>) -> Self {
        ClusterGroupProvider { membership }
    }
}

impl GroupProvider for ClusterGroupProvider {
    fn provide(
        &self,
        config: &EngineConfig,
        spec: &ModelSpec,
        max_model_len: usize,
    ) -> Result<DeviceGroup, EngineError> {
        let runtime = Handle::try_current()
            .map_err(|_| EngineError::Startup("the cluster group needs a tokio runtime".into()))?;
        let remotes = Remotes { config: config.clone(), membership: self.membership.clone(), runtime };
        match config.device {
            Device::Cpu => {
                let num_blocks = cpu_num_blocks(config, spec)?;
                let factory =
                    TcpGroupFactory { remotes, num_blocks, max_model_len, epoch: AtomicU64::new(0) };
                Ok(DeviceGroup { factory: Box::new(factory), num_blocks })
            }
            Device::Cuda => crate::cuda::cluster_group(remotes, max_model_len),
        }
    }
}

/// CPU ranks over the TCP collective; rank 0 (on the head) is the hub.
struct TcpGroupFactory {
    remotes: Remotes,
    num_blocks: usize,
    max_model_len: usize,
    epoch: AtomicU64,
}

/// Where the head's own ranks reach the hub: its bind address, or loopback for a wildcard.
fn local_hub_addr(bind: IpAddr, port: u16) -> SocketAddr {
    let ip = if bind.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { bind };
    SocketAddr::new(ip, port)
}

/// Every rank of a build that cannot start reports the same error.
pub fn failed_build(world: usize, error: String) -> Vec<ExecutorFactoryArgs> {
    (0..world)
        .map(|rank| {
            let error = error.clone();
            ExecutorFactoryArgs {
                rank,
                factory: Box::new(move || Err(error)),
                poison: Box::new(|_| {}),
                fault: None,
            }
        })
        .collect()
}

impl WorkerGroupFactory for TcpGroupFactory {
    fn build(&self) -> Vec<ExecutorFactoryArgs> {
        let config = &self.remotes.config;
        let world = config.parallel.tensor_parallel_size;
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.remotes.membership.start_group();
        let collective_timeout = Duration::from_millis(config.parallel.collective_timeout_ms);
        let deadline = Instant::now() + build_timeout(config);
        let bind: SocketAddr =
            config.cluster.listen.parse().expect("validated: cluster.listen is an address");
        let hub = TcpHub::bind((bind.ip(), 0)).and_then(|hub| Ok((hub.local_addr()?.port(), hub)));
        let (port, hub) = match hub {
            Ok(hub) => hub,
            Err(e) => {
                return failed_build(world, format!("binding the collective hub on {}: {e}", bind.ip()))
            }
        };
        let (mut hub, token, poison) = (Some(hub), rand::random::<u64>(), TcpPoison::new());
        let failed: BuildFailure = {
            let poison = poison.clone();
            Arc::new(move || poison.reason())
        };
        let mut ranks = Vec::with_capacity(world);
        for (rank, node, local_index) in layout(config) {
            let factory: ExecutorFactory = if node == 0 {
                let (config, num_blocks, max_model_len) =
                    (config.clone(), self.num_blocks, self.max_model_len);
                let (poison, hub, addr) = (poison.clone(), hub.take(), local_hub_addr(bind.ip(), port));
                Box::new(move || {
                    let connect = move || match hub {
                        Some(hub) => hub.accept(world, token, collective_timeout, deadline, poison),
                        None => tessera_cpu::tcp_connect(
                            addr,
                            rank,
                            world,
                            token,
                            collective_timeout,
                            deadline,
                            poison,
                        ),
                    };
                    tcp_rank_executor(&config, connect, num_blocks, max_model_len)
                })
            } else {
                let data_plane = DataPlane::Tcp { port, token };
                let build = BuildRank {
                    epoch,
                    rank,
                    world,
                    local_index,
                    data_plane,
                    num_blocks: self.num_blocks,
                    max_model_len: self.max_model_len,
                };
                self.remotes.factory(node, build, failed.clone())
            };
            let poison = poison.clone();
            ranks.push(ExecutorFactoryArgs {
                rank,
                factory,
                poison: Box::new(move |r| poison.poison(r)),
                fault: None,
            });
        }
        tracing::info!(epoch, world, "building the multi-node group");
        ranks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_laid_out_head_first() {
        let mut config = EngineConfig::default();
        config.parallel.tensor_parallel_size = 4;
        config.cluster.nodes = 3;
        config.cluster.ranks_per_node = Some(vec![2, 1, 1]);
        assert_eq!(layout(&config), vec![(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 2, 0)]);
    }

    #[test]
    fn the_data_plane_check_catches_a_wrong_sum() {
        struct Broken;
        impl Collective for Broken {
            fn rank(&self) -> usize {
                1
            }
            fn world(&self) -> usize {
                2
            }
            fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), String> {
                data[0] += 0.5;
                Ok(())
            }
            fn all_gather(&self, data: &[f32]) -> Result<Vec<Vec<f32>>, String> {
                Ok(vec![data.to_vec(); 2])
            }
        }
        let err = check_data_plane(&Broken).unwrap_err();
        assert!(err.starts_with("rank 1: data plane check failed"), "{err}");
        check_data_plane(&tessera_cpu::SingleRank).unwrap();
    }
}
