//! The head's view of its worker nodes: which incarnation of each node is ready, and which are
//! lost and why. The head actor writes it; group builds and remote-rank proxies (on worker
//! threads) read it and wait on its changes.

use crate::wire::NodeMsg;
use ractor::ActorRef;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub enum NodeStatus {
    /// Never joined, or refused.
    Absent,
    /// Accepted; its pre-flight report is awaited.
    Joining {
        incarnation: u64,
        actor: ActorRef<NodeMsg>,
    },
    Ready {
        incarnation: u64,
        actor: ActorRef<NodeMsg>,
        last_seen: Instant,
    },
    /// Was ready, then died, went silent or closed its session.
    Lost {
        incarnation: u64,
        reason: String,
    },
}

/// A ready node, as a proxy holds it.
#[derive(Clone)]
pub struct ReadyNode {
    pub incarnation: u64,
    pub actor: ActorRef<NodeMsg>,
}

pub struct Membership {
    /// Index 0 is the head itself (always `Absent` here).
    nodes: Mutex<Vec<NodeStatus>>,
    /// Bumped on every change, so waiters wake.
    version: watch::Sender<u64>,
    /// The incarnation of each node whose ranks the current group was built with.
    group: Mutex<Vec<Option<u64>>>,
}

impl Membership {
    pub fn new(nodes: usize) -> Self {
        Membership {
            nodes: Mutex::new(vec![NodeStatus::Absent; nodes]),
            version: watch::channel(0).0,
            group: Mutex::new(vec![None; nodes]),
        }
    }

    /// A group build starts: no node is in it until its ranks start.
    pub fn start_group(&self) {
        self.group.lock().unwrap_or_else(|e| e.into_inner()).fill(None);
    }

    /// A rank of incarnation `incarnation` of `node` started in the current group.
    pub fn joined_group(&self, node: usize, incarnation: u64) {
        self.group.lock().unwrap_or_else(|e| e.into_inner())[node] = Some(incarnation);
    }

    /// The incarnation of `node` the current group uses, if any.
    pub fn in_group(&self, node: usize) -> Option<u64> {
        self.group.lock().unwrap_or_else(|e| e.into_inner())[node]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NodeStatus>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self, node: usize) -> NodeStatus {
        self.lock()[node].clone()
    }

    pub fn set(&self, node: usize, status: NodeStatus) {
        self.lock()[node] = status;
        self.version.send_modify(|v| *v += 1);
    }

    /// Updates a ready node's `last_seen` if it is still incarnation `incarnation`.
    pub fn seen(&self, node: usize, incarnation: u64) {
        if let NodeStatus::Ready { incarnation: current, last_seen, .. } = &mut self.lock()[node] {
            if *current == incarnation {
                *last_seen = Instant::now();
            }
        }
    }

    /// Marks incarnation `incarnation` of `node` lost (if it is the current one); true if it was.
    pub fn lose(&self, node: usize, incarnation: u64, reason: &str) -> bool {
        let mut nodes = self.lock();
        let current = match &nodes[node] {
            NodeStatus::Joining { incarnation, .. } | NodeStatus::Ready { incarnation, .. } => *incarnation,
            _ => return false,
        };
        if current != incarnation {
            return false;
        }
        nodes[node] = NodeStatus::Lost { incarnation, reason: reason.to_string() };
        drop(nodes);
        self.version.send_modify(|v| *v += 1);
        true
    }

    /// Nodes `1..` that are not ready, with why.
    pub fn not_ready(&self) -> Vec<(usize, String)> {
        self.lock()
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, status)| match status {
                NodeStatus::Ready { .. } => None,
                NodeStatus::Absent => Some((i, "has not joined".to_string())),
                NodeStatus::Joining { .. } => Some((i, "joined, pre-flight report pending".to_string())),
                NodeStatus::Lost { reason, .. } => Some((i, format!("lost: {reason}"))),
            })
            .collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Why incarnation `incarnation` of `node` is no longer usable, if it is not.
    pub fn gone(&self, node: usize, incarnation: u64) -> Option<String> {
        match &self.lock()[node] {
            NodeStatus::Ready { incarnation: current, .. } if *current == incarnation => None,
            NodeStatus::Lost { incarnation: current, reason } if *current == incarnation => {
                Some(reason.clone())
            }
            _ => Some(format!("node {node} was replaced by a new incarnation")),
        }
    }

    /// Resolves when incarnation `incarnation` of `node` is lost; yields why.
    pub async fn lost(&self, node: usize, incarnation: u64) -> String {
        let mut changes = self.subscribe();
        loop {
            if let Some(reason) = self.gone(node, incarnation) {
                return reason;
            }
            if changes.changed().await.is_err() {
                return "the head is shutting down".into();
            }
        }
    }

    /// Blocks (on a worker thread) until `node` is ready, for at most `timeout`; `stop` is
    /// polled so that a failed group build stops waiting.
    pub fn wait_ready(
        &self,
        runtime: &Handle,
        node: usize,
        timeout: Duration,
        stop: impl Fn() -> Option<String>,
    ) -> Result<ReadyNode, String> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.subscribe();
        loop {
            if let NodeStatus::Ready { incarnation, actor, .. } = self.status(node) {
                return Ok(ReadyNode { incarnation, actor });
            }
            if let Some(reason) = stop() {
                return Err(reason);
            }
            let now = Instant::now();
            if now >= deadline {
                let why = match self.status(node) {
                    NodeStatus::Lost { reason, .. } => format!(" (lost: {reason})"),
                    _ => String::new(),
                };
                return Err(format!("node {node} was not ready within {} ms{why}", timeout.as_millis()));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            // Built inside `block_on`: a timer needs the runtime's context (this is a worker thread).
            let _ = runtime.block_on(async { tokio::time::timeout(wait, changes.changed()).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_needs_the_current_incarnation() {
        let membership = Membership::new(2);
        assert!(!membership.lose(1, 5, "x"), "an absent node cannot be lost");
        membership.set(1, NodeStatus::Lost { incarnation: 5, reason: "old".into() });
        assert!(!membership.lose(1, 5, "again"), "already lost");
        assert_eq!(membership.gone(1, 5).as_deref(), Some("old"));
        assert_eq!(membership.gone(1, 6).as_deref(), Some("node 1 was replaced by a new incarnation"));
        assert_eq!(membership.not_ready(), vec![(1, "lost: old".to_string())]);
    }

    #[test]
    fn a_group_remembers_the_incarnations_it_was_built_with() {
        let membership = Membership::new(3);
        membership.joined_group(2, 7);
        assert_eq!(membership.in_group(2), Some(7));
        membership.start_group();
        assert_eq!(membership.in_group(2), None, "a new build starts empty");
    }

    #[test]
    fn waiting_for_an_absent_node_times_out_or_stops() {
        // Multi-threaded, as in the binary: `Handle::block_on` cannot drive a current-thread
        // runtime's timers.
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
        let membership = Membership::new(2);
        let start = Instant::now();
        let err =
            membership.wait_ready(runtime.handle(), 1, Duration::from_millis(150), || None).err().unwrap();
        assert!(err.contains("not ready within 150 ms"), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(150));
        let err = membership
            .wait_ready(runtime.handle(), 1, Duration::from_secs(60), || Some("group failed".into()))
            .err()
            .unwrap();
        assert_eq!(err, "group failed");
    }
}
