//! `NodeActor`: a worker node's remotely addressable actor. It starts the node's ranks when the
//! head builds a group (one `WorkerThread` per rank, the same thread the head's own ranks run
//! on), forwards each rank's plans to its thread (which replies straight to the head), answers
//! heartbeats, and passes on the head's shutdown.

use crate::group::tcp_rank_executor;
use crate::wire::{BuildRank, DataPlane, NodeMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tessera_core::EngineConfig;
use tessera_cpu::TcpPoison;
use tessera_engine::worker::{ExecutorFactory, WorkerJob, WorkerThread};
use tokio::sync::mpsc;

/// What the node learns when the head accepts it.
pub struct NodeContext {
    pub config: EngineConfig,
    pub node_rank: usize,
    /// The head's address as this node reaches it: the TCP hub listens there.
    pub head_ip: IpAddr,
    pub first_rank: usize,
    pub num_ranks: usize,
}

pub struct NodeArgs {
    pub context: Arc<OnceLock<NodeContext>>,
    /// When the head last pinged this node.
    pub last_ping: Arc<Mutex<Instant>>,
    /// The head's shutdown reason goes here.
    pub shutdown: mpsc::UnboundedSender<String>,
}

pub struct NodeState {
    args: NodeArgs,
    ranks: HashMap<usize, RankSlot>,
}

pub struct NodeActor;

/// Fails a rank's data plane (closes its sockets, or raises its NCCL abort signal).
pub type Poison = Box<dyn Fn(&str) + Send + Sync>;

/// The rank's executor factory and its poison, for the data plane the head chose.
fn rank_factory(context: &NodeContext, build: &BuildRank) -> Result<(ExecutorFactory, Poison), String> {
    let config = context.config.clone();
    let (rank, world, num_blocks, max_model_len) =
        (build.rank, build.world, build.num_blocks, build.max_model_len);
    match &build.data_plane {
        DataPlane::Tcp { port, token } => {
            let collective_timeout = Duration::from_millis(config.parallel.collective_timeout_ms);
            let deadline = Instant::now() + crate::group::build_timeout(&config);
            let (hub, token, poison) = (SocketAddr::new(context.head_ip, *port), *token, TcpPoison::new());
            let comm_poison = poison.clone();
            let factory: ExecutorFactory = Box::new(move || {
                let connect = move || {
                    tessera_cpu::tcp_connect(
                        hub,
                        rank,
                        world,
                        token,
                        collective_timeout,
                        deadline,
                        comm_poison,
                    )
                };
                tcp_rank_executor(&config, connect, num_blocks, max_model_len)
            });
            Ok((factory, Box::new(move |reason: &str| poison.poison(reason))))
        }
        DataPlane::Nccl { id } => crate::cuda::remote_rank(&config, build, id),
    }
}

/// A running rank: its group epoch, thread, and poison.
struct RankSlot {
    epoch: u64,
    thread: WorkerThread,
    poison: Arc<Poison>,
}

impl NodeState {
    fn build(&mut self, build: BuildRank, reply: RpcReplyPort<Result<(), String>>) {
        let Some(context) = self.args.context.get() else {
            let _ = reply.send(Err("this node has not been accepted yet".into()));
            return;
        };
        let own = context.first_rank..context.first_rank + context.num_ranks;
        if !own.contains(&build.rank) {
            let node = context.node_rank;
            let _ = reply.send(Err(format!("rank {} is not one of node {node}'s ranks {own:?}", build.rank)));
            return;
        }
        // The previous group's rank gives up its collectives; its thread ends when its step does.
        if let Some(old) = self.ranks.remove(&build.rank) {
            (old.poison)(&format!("replaced by group {}", build.epoch));
        }
        let (factory, poison) = match rank_factory(context, &build) {
            Ok(built) => built,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        tracing::info!(rank = build.rank, epoch = build.epoch, "starting rank");
        let poison = Arc::new(poison);
        let thread_poison = poison.clone();
        let (thread, ready) =
            WorkerThread::spawn(build.rank, factory, Box::new(move |reason| thread_poison(reason)), None);
        self.ranks.insert(build.rank, RankSlot { epoch: build.epoch, thread, poison });
        let rank = build.rank;
        tokio::spawn(async move {
            let started =
                ready.await.unwrap_or_else(|_| Err(format!("rank {rank}'s thread exited while starting")));
            if let Err(err) = &started {
                tracing::error!(rank, %err, "rank failed to start");
            }
            let _ = reply.send(started);
        });
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState { args, ranks: HashMap::new() })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Build(build, reply) => state.build(build, reply),
            NodeMsg::Execute { epoch, rank, plan, reply } => match state.ranks.get(&rank) {
                Some(slot) if slot.epoch == epoch => slot.thread.submit(WorkerJob::Execute(plan, reply)),
                Some(slot) => {
                    let _ = reply.send(Err(format!("rank {rank} runs group {}, not {epoch}", slot.epoch)));
                }
                None => {
                    let _ = reply.send(Err(format!("rank {rank} is not running on this node")));
                }
            },
            NodeMsg::Ping(reply) => {
                *state.args.last_ping.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                let _ = reply.send(0);
            }
            NodeMsg::Shutdown(reason) => {
                let _ = state.args.shutdown.send(reason);
            }
        }
        Ok(())
    }
}
