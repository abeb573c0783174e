//! Multi-node Tessera. One process per node: the head runs `tessera serve` (HTTP, scheduler,
//! coordinator, its own ranks); every other node runs `tessera worker --join HEAD:PORT` and hosts
//! its ranks for the head's coordinator.
//!
//! ```text
//!  head (tessera serve)                                      worker node (tessera worker)
//!  Coordinator --Execute--> WorkerActor (local rank)
//!       |                   WorkerActor --> RemoteRank ==ractor_cluster==> NodeActor --> WorkerThread
//!       |                                   (proxy)      (bincode plans)   (per node)    (rank, model)
//!  HeadActor <== join, pre-flight report, heartbeats ==> NodeActor
//!  ranks' collectives: TCP hub on the head (CPU) or NCCL (GPU), never the actor messages
//! ```
//!
//! - `session`: ractor_cluster node servers with the shared cookie; a session that closes
//!   before it authenticated is a refused cookie, logged on both sides.
//! - `wire` + `codec`: the messages that cross sessions; bincode lives in `codec` only.
//! - `head`: admission (`preflight` checks), heartbeats with deadlines, node loss.
//! - `membership`: the head's view of each node, read by group builds and proxies.
//! - `group` + `proxy`: the coordinator's group; remote ranks as `RemoteRank` proxies.
//! - `node` + `worker`: the worker process's actor and driver.

mod codec;
mod cuda;
mod group;
mod head;
mod membership;
mod node;
pub mod preflight;
mod proxy;
mod session;
mod wire;
mod worker;

pub use codec::{decode, encode, CodecError};
pub use group::check_data_plane;
pub use head::Head;
pub use worker::{run_worker, WorkerOptions};
