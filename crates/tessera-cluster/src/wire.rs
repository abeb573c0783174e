//! What crosses a cluster session: the payloads (serde types, encoded by `codec`) and the two
//! remotely addressable actors' message enums, `HeadMsg` and `NodeMsg`, with their
//! `ractor::Message` implementations. A call's reply port travels as a bytes port; the typed
//! port on each side is bridged by a small task (`outgoing_port`, `incoming_port`).

use crate::codec;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::RpcReplyPort;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tessera_core::step::StepPlan;
use tessera_engine::worker::WorkerReply;

/// Bumped whenever a message below changes shape; a mismatch is refused at join.
pub const PROTOCOL_VERSION: u32 = 1;

/// The process group the head's actor joins; workers find it there.
pub const HEAD_GROUP: &str = "tessera.head";

/// The process group of one incarnation of a worker node's actor.
pub fn node_group(node_rank: usize, incarnation: u64) -> String {
    format!("tessera.node.{node_rank}.{incarnation:016x}")
}

/// A worker asks to join. `config` is its own effective config (JSON, node-local keys removed)
/// when it was given one; without it the worker adopts the head's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_rank: usize,
    /// Random per process start, so a restarted node is told apart from its previous life.
    pub incarnation: u64,
    pub version: String,
    pub protocol: u32,
    pub config: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JoinReply {
    Accepted {
        /// The head's effective config as JSON, without the cookie.
        config: String,
        first_rank: usize,
        num_ranks: usize,
    },
    Refused(String),
}

/// The worker's pre-flight results, sent after it was accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node_rank: usize,
    pub incarnation: u64,
    /// `crate::preflight::model_fingerprint` of the model as this node sees it.
    pub model: String,
    /// Devices this node can use (`None` on the CPU, which has no limit).
    pub num_devices: Option<usize>,
}

/// How the ranks of one group build reach each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataPlane {
    /// The CPU TCP collective: the hub (rank 0, on the head) listens on `port` of the address
    /// the worker joined; `token` tells this group's connections from a previous group's.
    Tcp { port: u16, token: u64 },
    /// NCCL: the unique id the head created for this group.
    Nccl { id: Vec<u8> },
}

/// Start one rank of group `epoch` on a worker node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildRank {
    pub epoch: u64,
    pub rank: usize,
    pub world: usize,
    /// The rank's device on its node (GPU ordinal; unused on the CPU).
    pub local_index: usize,
    pub data_plane: DataPlane,
    pub num_blocks: usize,
    pub max_model_len: usize,
}

/// Messages to the head's actor. Only `Join` and `Report` come from other nodes.
pub enum HeadMsg {
    Join(JoinRequest, RpcReplyPort<JoinReply>),
    Report(NodeReport, RpcReplyPort<Result<(), String>>),
    /// Local: time to ping every node and check deadlines.
    Tick,
    /// Local: node `node_rank`'s incarnation answered a ping.
    Pong {
        node_rank: usize,
        incarnation: u64,
    },
    /// Local: a cluster session closed (`name` is the peer's node name, if it gave one).
    SessionClosed {
        name: Option<String>,
        authenticated: bool,
        peer: String,
    },
}

/// Messages to a worker node's actor.
pub enum NodeMsg {
    Build(BuildRank, RpcReplyPort<Result<(), String>>),
    /// Run `plan` on rank `rank` of group `epoch`.
    Execute {
        epoch: u64,
        rank: usize,
        plan: Arc<StepPlan>,
        reply: RpcReplyPort<WorkerReply>,
    },
    Ping(RpcReplyPort<u64>),
    /// The head shuts the deployment down; the worker exits 0.
    Shutdown(String),
}

/// A bytes port for the wire whose answer is decoded into `typed` by a bridging task.
fn outgoing_port<T: DeserializeOwned + Send + 'static>(typed: RpcReplyPort<T>) -> RpcReplyPort<Vec<u8>> {
    let timeout = typed.get_timeout();
    let (tx, rx) = ractor::concurrency::oneshot::<Vec<u8>>();
    tokio::spawn(async move {
        if let Ok(bytes) = rx.await {
            match codec::decode::<T>(&bytes) {
                Ok(value) => {
                    let _ = typed.send(value);
                }
                // Dropping `typed` makes the caller's call fail, which it reports.
                Err(err) => tracing::error!(%err, "undecodable reply from a cluster peer"),
            }
        }
    });
    match timeout {
        Some(timeout) => (tx, timeout).into(),
        None => tx.into(),
    }
}

/// A typed port for a message that came off the wire; its answer is encoded into `bytes`.
fn incoming_port<T: Serialize + Send + 'static>(bytes: RpcReplyPort<Vec<u8>>) -> RpcReplyPort<T> {
    let timeout = bytes.get_timeout();
    let (tx, rx) = ractor::concurrency::oneshot::<T>();
    tokio::spawn(async move {
        if let Ok(value) = rx.await {
            match codec::encode(&value) {
                Ok(encoded) => {
                    let _ = bytes.send(encoded);
                }
                Err(err) => tracing::error!(%err, "cannot encode a reply to a cluster peer"),
            }
        }
    });
    match timeout {
        Some(timeout) => (tx, timeout).into(),
        None => tx.into(),
    }
}

fn encoded<T: Serialize>(value: &T) -> Result<Vec<u8>, BoxedDowncastErr> {
    codec::encode(value).map_err(|err| {
        tracing::error!(%err, "cannot send a cluster message");
        BoxedDowncastErr
    })
}

fn decoded<T: DeserializeOwned>(bytes: &[u8], variant: &str) -> Result<T, BoxedDowncastErr> {
    codec::decode(bytes).map_err(|err| {
        tracing::error!(%err, variant, "undecodable cluster message");
        BoxedDowncastErr
    })
}

fn call(variant: &str, args: Vec<u8>, reply: RpcReplyPort<Vec<u8>>) -> SerializedMessage {
    SerializedMessage::Call { variant: variant.to_string(), args, reply, metadata: None }
}

impl ractor::Message for HeadMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            HeadMsg::Join(request, reply) => Ok(call("Join", encoded(&request)?, outgoing_port(reply))),
            HeadMsg::Report(report, reply) => Ok(call("Report", encoded(&report)?, outgoing_port(reply))),
            // Local-only messages are never sent to a remote head.
            HeadMsg::Tick | HeadMsg::Pong { .. } | HeadMsg::SessionClosed { .. } => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Call { variant, args, reply, .. } => match variant.as_str() {
                "Join" => Ok(HeadMsg::Join(decoded(&args, &variant)?, incoming_port(reply))),
                "Report" => Ok(HeadMsg::Report(decoded(&args, &variant)?, incoming_port(reply))),
                _ => Err(BoxedDowncastErr),
            },
            _ => Err(BoxedDowncastErr),
        }
    }
}

impl ractor::Message for NodeMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            NodeMsg::Build(build, reply) => Ok(call("Build", encoded(&build)?, outgoing_port(reply))),
            NodeMsg::Execute { epoch, rank, plan, reply } => {
                Ok(call("Execute", encoded(&(epoch, rank, &*plan))?, outgoing_port(reply)))
            }
            NodeMsg::Ping(reply) => Ok(call("Ping", Vec::new(), outgoing_port(reply))),
            NodeMsg::Shutdown(reason) => Ok(SerializedMessage::Cast {
                variant: "Shutdown".into(),
                args: encoded(&reason)?,
                metadata: None,
            }),
        }
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Call { variant, args, reply, .. } => match variant.as_str() {
                "Build" => Ok(NodeMsg::Build(decoded(&args, &variant)?, incoming_port(reply))),
                "Execute" => {
                    let (epoch, rank, plan): (u64, usize, StepPlan) = decoded(&args, &variant)?;
                    Ok(NodeMsg::Execute { epoch, rank, plan: Arc::new(plan), reply: incoming_port(reply) })
                }
                "Ping" => Ok(NodeMsg::Ping(incoming_port(reply))),
                _ => Err(BoxedDowncastErr),
            },
            SerializedMessage::Cast { variant, args, .. } if variant == "Shutdown" => {
                Ok(NodeMsg::Shutdown(decoded(&args, &variant)?))
            }
            _ => Err(BoxedDowncastErr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::Message;
    use tessera_core::step::{SampledToken, StepResult};
    use tessera_core::RequestId;

    /// What a remote actor would receive: the message serialized, then deserialized.
    fn over_the_wire<M: Message>(message: M) -> M {
        M::deserialize(message.serialize().expect("serializable")).expect("deserializable")
    }

    #[tokio::test]
    async fn a_call_and_its_reply_cross_the_wire() {
        let (tx, rx) = ractor::concurrency::oneshot();
        let plan = Arc::new(StepPlan { step_id: 42, ..Default::default() });
        let sent = NodeMsg::Execute { epoch: 3, rank: 2, plan: plan.clone(), reply: tx.into() };
        let NodeMsg::Execute { epoch, rank, plan: received, reply } = over_the_wire(sent) else {
            panic!("wrong variant")
        };
        assert_eq!((epoch, rank, &*received), (3, 2, &*plan));
        let result = StepResult {
            step_id: 42,
            sampled: vec![SampledToken { request_id: RequestId(1), token_id: 7, logprobs: None }],
        };
        reply.send(Ok(Some(result.clone()))).unwrap();
        assert_eq!(rx.await.unwrap(), Ok(Some(result)));
    }

    #[tokio::test]
    async fn join_requests_keep_every_field_and_local_messages_stay_local() {
        let (tx, rx) = ractor::concurrency::oneshot();
        let request = JoinRequest {
            node_rank: 2,
            incarnation: 0xfeed,
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            config: Some("{}".into()),
        };
        let HeadMsg::Join(received, reply) = over_the_wire(HeadMsg::Join(request.clone(), tx.into())) else {
            panic!("wrong variant")
        };
        assert_eq!(received, request);
        reply.send(JoinReply::Refused("no".into())).unwrap();
        assert_eq!(rx.await.unwrap(), JoinReply::Refused("no".into()));
        assert!(HeadMsg::Tick.serialize().is_err());
        let NodeMsg::Shutdown(reason) = over_the_wire(NodeMsg::Shutdown("bye".into())) else { panic!() };
        assert_eq!(reason, "bye");
    }
}
