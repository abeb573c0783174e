//! ractor_cluster plumbing shared by the head and the workers: starting a `NodeServer` with the
//! cookie, and turning its session events into something each side can act on (a session that
//! closes before it authenticated is how a wrong cookie shows).

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A session event, reduced to what Tessera uses.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    Authenticated { name: Option<String>, peer: String },
    Closed { name: Option<String>, peer: String, authenticated: bool },
}

/// Starts a node server listening on `listen` with `cookie`, in isolated mode (nodes connect
/// only where told). `name` must be unique in the deployment.
pub async fn start_node_server(
    listen: SocketAddr,
    cookie: &str,
    name: &str,
) -> Result<ActorRef<NodeServerMessage>, String> {
    let server = NodeServer::new(
        listen.port(),
        cookie.to_string(),
        name.to_string(),
        listen.ip().to_string(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(listen.ip());
    let (actor, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| format!("starting the cluster listener on {listen}: {e}"))?;
    Ok(actor)
}

/// Calls `on_event` for every session event of `server`.
pub fn subscribe(
    server: &ActorRef<NodeServerMessage>,
    on_event: impl Fn(SessionEvent) + Send + Sync + 'static,
) -> Result<(), String> {
    let subscription = Subscription { authenticated: Mutex::default(), on_event: Arc::new(on_event) };
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "tessera".into(),
            subscription: Box::new(subscription),
        })
        .map_err(|e| format!("subscribing to cluster session events: {e}"))
}

struct Subscription {
    /// Sessions (node ids) that authenticated, so a close can say whether it had.
    authenticated: Mutex<HashSet<u64>>,
    on_event: Arc<dyn Fn(SessionEvent) + Send + Sync>,
}

fn name_of(session: &NodeServerSessionInformation) -> Option<String> {
    session.peer_name.as_ref().map(|n| n.name.clone())
}

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        tracing::debug!(peer = %session.peer_addr, "cluster session opened");
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        self.authenticated.lock().unwrap_or_else(|e| e.into_inner()).insert(session.node_id);
        (self.on_event)(SessionEvent::Authenticated {
            name: name_of(&session),
            peer: session.peer_addr.clone(),
        });
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let authenticated =
            self.authenticated.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.node_id);
        (self.on_event)(SessionEvent::Closed {
            name: name_of(&session),
            peer: session.peer_addr.clone(),
            authenticated,
        });
    }
}

/// The node name a worker's server uses: its rank and incarnation, which the head parses back.
pub fn worker_node_name(node_rank: usize, incarnation: u64) -> String {
    format!("tessera-node{node_rank}-{incarnation:016x}")
}

/// `(node_rank, incarnation)` from a session's peer name (`NAME@HOST`).
pub fn parse_worker_node_name(name: &str) -> Option<(usize, u64)> {
    let base = name.split('@').next()?;
    let rest = base.strip_prefix("tessera-node")?;
    let (rank, incarnation) = rest.split_once('-')?;
    Some((rank.parse().ok()?, u64::from_str_radix(incarnation, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_round_trip() {
        let name = format!("{}@10.0.0.2", worker_node_name(3, 0xabc));
        assert_eq!(parse_worker_node_name(&name), Some((3, 0xabc)));
        assert_eq!(parse_worker_node_name("tessera-head@0.0.0.0"), None);
    }
}
