//! The head node: its cluster listener, the `HeadActor` that admits worker nodes (join and
//! pre-flight), heartbeats with deadlines, and `Head`, the handle `tessera serve` holds.
//!
//! ractor_cluster's own ping has no deadline, so the head pings every ready node each
//! `heartbeat_interval_ms` (a call with a timeout) and declares a node lost when it has not
//! answered for `heartbeat_timeout_ms`, or at once when its session closes.

use crate::group::ClusterGroupProvider;
use crate::membership::{Membership, NodeStatus};
use crate::preflight::{self, VERSION};
use crate::session::{self, parse_worker_node_name, SessionEvent};
use crate::wire::{
    node_group, HeadMsg, JoinReply, JoinRequest, NodeMsg, NodeReport, HEAD_GROUP, PROTOCOL_VERSION,
};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::NodeServerMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_core::config::OnNodeFailure;
use tessera_core::EngineConfig;
use tessera_engine::Engine;
use tokio::sync::{mpsc, watch};

struct HeadActor;

/// The config a node adopts: the head's, less the secret it already has.
fn without_cookie(config: &EngineConfig) -> EngineConfig {
    let mut config = config.clone();
    config.cluster.cookie = String::new();
    config
}

struct HeadArgs {
    config: EngineConfig,
    membership: Arc<Membership>,
    /// The head's own model fingerprint, which every node must match.
    model: String,
    /// Set (once) when a node is lost and `on_node_failure = "exit"`.
    fatal: watch::Sender<Option<String>>,
    /// Every loss: node, incarnation, why.
    losses: mpsc::UnboundedSender<(usize, u64, String)>,
}

impl HeadArgs {
    fn node_ranks(&self) -> Vec<usize> {
        self.config.cluster.node_ranks(self.config.parallel.tensor_parallel_size)
    }

    fn join(&self, request: JoinRequest) -> JoinReply {
        let refuse = |why: String| {
            tracing::warn!(node = request.node_rank, %why, "node refused");
            JoinReply::Refused(why)
        };
        let node = request.node_rank;
        let nodes = self.config.cluster.nodes;
        if request.protocol != PROTOCOL_VERSION || request.version != VERSION {
            return refuse(format!(
                "node {node}: version check failed: head runs Tessera {VERSION} (protocol {PROTOCOL_VERSION}), \
                 node runs {} (protocol {})",
                request.version, request.protocol
            ));
        }
        if node == 0 || node >= nodes {
            return refuse(format!(
                "node rank {node} is out of range: worker ranks are 1 to {} for cluster.nodes = {nodes}",
                nodes - 1
            ));
        }
        match self.membership.status(node) {
            NodeStatus::Joining { .. } | NodeStatus::Ready { .. } => {
                return refuse(format!("node {node}: another process already joined as node rank {node}"));
            }
            NodeStatus::Absent | NodeStatus::Lost { .. } => {}
        }
        let head_config = preflight::shared_config_json(&self.config);
        if let Some(node_config) = &request.config {
            match preflight::config_differences(&head_config, node_config) {
                Ok(diffs) if diffs.is_empty() => {}
                Ok(diffs) => {
                    return refuse(format!("node {node}: config check failed: {}", diffs.join("; ")))
                }
                Err(err) => return refuse(format!("node {node}: config check failed: {err}")),
            }
        }
        let group = node_group(node, request.incarnation);
        let Some(cell) = ractor::pg::get_members(&group).into_iter().find(|c| !c.get_id().is_local()) else {
            return refuse(format!("node {node}: its actor is not visible on the head (group {group})"));
        };
        self.membership
            .set(node, NodeStatus::Joining { incarnation: request.incarnation, actor: cell.into() });
        let ranks = self.node_ranks();
        tracing::info!(
            node,
            incarnation = request.incarnation,
            "node joined; awaiting its pre-flight report"
        );
        JoinReply::Accepted {
            config: serde_json::to_string(&without_cookie(&self.config)).expect("a config serializes"),
            first_rank: ranks[..node].iter().sum(),
            num_ranks: ranks[node],
        }
    }

    fn report(&self, report: NodeReport) -> Result<(), String> {
        let node = report.node_rank;
        if node == 0 || node >= self.config.cluster.nodes {
            return Err(format!("node rank {node} is out of range"));
        }
        let actor = match self.membership.status(node) {
            NodeStatus::Joining { incarnation, actor } if incarnation == report.incarnation => actor,
            _ => return Err(format!("node {node}: report from an incarnation that did not join")),
        };
        let checked = preflight::check_report(
            node,
            &self.model,
            &report.model,
            self.node_ranks()[node],
            report.num_devices,
        );
        match checked {
            Ok(()) => {
                tracing::info!(node, "node passed pre-flight and is ready");
                let status =
                    NodeStatus::Ready { incarnation: report.incarnation, actor, last_seen: Instant::now() };
                self.membership.set(node, status);
                Ok(())
            }
            Err(why) => {
                tracing::warn!(node, %why, "node refused");
                self.membership.set(node, NodeStatus::Absent);
                Err(why)
            }
        }
    }

    fn lose(&self, node: usize, incarnation: u64, reason: String) {
        if self.membership.lose(node, incarnation, &reason) {
            tracing::error!(node, %reason, "node lost");
            let _ = self.losses.send((node, incarnation, reason.clone()));
            if self.config.cluster.on_node_failure == OnNodeFailure::Exit {
                self.fatal.send_if_modified(|fatal| {
                    let first = fatal.is_none();
                    fatal.get_or_insert_with(|| format!("node {node} lost: {reason}"));
                    first
                });
            }
        }
    }

    /// Pings every ready node (without blocking the actor) and loses the silent ones.
    fn tick(&self, myself: &ActorRef<HeadMsg>) {
        let interval = Duration::from_millis(self.config.cluster.heartbeat_interval_ms);
        let timeout = Duration::from_millis(self.config.cluster.heartbeat_timeout_ms);
        for node in 1..self.config.cluster.nodes {
            let NodeStatus::Ready { incarnation, actor, last_seen } = self.membership.status(node) else {
                continue;
            };
            if last_seen.elapsed() > timeout {
                self.lose(
                    node,
                    incarnation,
                    format!("no heartbeat for {} ms", last_seen.elapsed().as_millis()),
                );
                continue;
            }
            let myself = myself.clone();
            tokio::spawn(async move {
                if let Ok(CallResult::Success(_)) = actor.call(NodeMsg::Ping, Some(interval)).await {
                    let _ = myself.cast(HeadMsg::Pong { node_rank: node, incarnation });
                }
            });
        }
    }
}

impl Actor for HeadActor {
    type Msg = HeadMsg;
    type State = HeadArgs;
    type Arguments = HeadArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HeadMsg>,
        args: HeadArgs,
    ) -> Result<HeadArgs, ActorProcessingErr> {
        ractor::pg::join(HEAD_GROUP.to_string(), vec![myself.get_cell()]);
        let interval = Duration::from_millis(args.config.cluster.heartbeat_interval_ms);
        let ticker = myself.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            loop {
                every.tick().await;
                if ticker.cast(HeadMsg::Tick).is_err() {
                    break;
                }
            }
        });
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<HeadMsg>,
        msg: HeadMsg,
        state: &mut HeadArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HeadMsg::Join(request, reply) => {
                let _ = reply.send(state.join(request));
            }
            HeadMsg::Report(report, reply) => {
                let _ = reply.send(state.report(report));
            }
            HeadMsg::Tick => state.tick(&myself),
            HeadMsg::Pong { node_rank, incarnation } => state.membership.seen(node_rank, incarnation),
            HeadMsg::SessionClosed { name, authenticated, peer } => {
                if !authenticated {
                    tracing::warn!(%peer, "refused a cluster session: authentication failed (wrong cluster.cookie?)");
                } else if let Some((node, incarnation)) = name.as_deref().and_then(parse_worker_node_name) {
                    if node < state.config.cluster.nodes {
                        state.lose(node, incarnation, "its cluster session closed".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The head's side of a deployment, held by `tessera serve`.
pub struct Head {
    config: EngineConfig,
    membership: Arc<Membership>,
    actor: ActorRef<HeadMsg>,
    server: ActorRef<NodeServerMessage>,
    fatal: watch::Receiver<Option<String>>,
    losses: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(usize, u64, String)>>>,
}

impl Head {
    /// Starts listening on `cluster.listen`; nodes may join from now on.
    pub async fn start(config: &EngineConfig) -> Result<Head, String> {
        let cluster = &config.cluster;
        let listen = cluster.listen.parse().map_err(|e| format!("cluster.listen: {e}"))?;
        let model =
            preflight::model_fingerprint(config).map_err(|e| format!("node 0 (head): model check: {e}"))?;
        let membership = Arc::new(Membership::new(cluster.nodes));
        let (fatal_tx, fatal) = watch::channel(None);
        let (losses_tx, losses) = mpsc::unbounded_channel();
        let args = HeadArgs {
            config: config.clone(),
            membership: membership.clone(),
            model,
            fatal: fatal_tx,
            losses: losses_tx,
        };
        let (actor, _) =
            Actor::spawn(None, HeadActor, args).await.map_err(|e| format!("starting the head actor: {e}"))?;
        let server = match session::start_node_server(listen, &cluster.cookie, "tessera-head").await {
            Ok(server) => server,
            Err(err) => {
                actor.stop(None);
                return Err(err);
            }
        };
        let events = actor.clone();
        session::subscribe(&server, move |event| {
            if let SessionEvent::Closed { name, peer, authenticated } = event {
                let _ = events.cast(HeadMsg::SessionClosed { name, authenticated, peer });
            }
        })?;
        tracing::info!(%listen, nodes = cluster.nodes, "cluster head listening");
        Ok(Head {
            config: config.clone(),
            membership,
            actor,
            server,
            fatal,
            losses: std::sync::Mutex::new(Some(losses)),
        })
    }

    /// Waits until every node joined and passed pre-flight, or `join_timeout_ms` passed (the
    /// error lists every missing node and why).
    pub async fn wait_for_nodes(&self) -> Result<(), String> {
        let timeout = Duration::from_millis(self.config.cluster.join_timeout_ms);
        let mut changes = self.membership.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            while !self.membership.not_ready().is_empty() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let missing = self.membership.not_ready();
        if waited.is_ok() && missing.is_empty() {
            tracing::info!(nodes = self.config.cluster.nodes, "every node joined and passed pre-flight");
            return Ok(());
        }
        let list: Vec<String> = missing.iter().map(|(node, why)| format!("node {node} {why}")).collect();
        Err(format!("cluster.join_timeout_ms ({} ms) passed: {}", timeout.as_millis(), list.join("; ")))
    }

    /// The worker group for `EngineOptions::group`: local ranks plus proxies of remote ones.
    pub fn group_provider(&self) -> Arc<dyn tessera_engine::GroupProvider> {
        Arc::new(ClusterGroupProvider::new(self.membership.clone()))
    }

    /// From now on a lost node fails `engine`'s group at once, also while idle (a step in
    /// flight fails by itself: its proxies and collectives see the loss). Call once.
    pub fn fail_engine_on_node_loss(&self, engine: Engine) {
        let Some(mut losses) = self.losses.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let membership = self.membership.clone();
        tokio::spawn(async move {
            while let Some((node, incarnation, reason)) = losses.recv().await {
                let membership = membership.clone();
                let still_broken = move || membership.in_group(node) == Some(incarnation);
                engine.fail_workers_if(format!("node {node} lost: {reason}"), still_broken);
            }
        });
    }

    /// Resolves when a node was lost and `on_node_failure = "exit"`; yields why.
    pub fn fatal(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            loop {
                if let Some(reason) = fatal.borrow_and_update().clone() {
                    return reason;
                }
                if fatal.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Tells every ready node to exit (0) and stops listening.
    pub async fn shutdown(&self, reason: &str) {
        for node in 1..self.config.cluster.nodes {
            if let NodeStatus::Ready { actor, .. } | NodeStatus::Joining { actor, .. } =
                self.membership.status(node)
            {
                let _ = actor.cast(NodeMsg::Shutdown(reason.to_string()));
            }
        }
        // Let the casts leave before the sessions close.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.actor.stop(None);
        self.server.stop(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_args() -> HeadArgs {
        let mut config = EngineConfig::default();
        config.parallel.tensor_parallel_size = 2;
        config.cluster.nodes = 2;
        config.cluster.cookie = "c".into();
        HeadArgs {
            membership: Arc::new(Membership::new(2)),
            model: preflight::model_fingerprint(&config).unwrap(),
            fatal: watch::channel(None).0,
            losses: mpsc::unbounded_channel().0,
            config,
        }
    }

    fn join(args: &HeadArgs, request: JoinRequest) -> String {
        match args.join(request) {
            JoinReply::Refused(why) => why,
            JoinReply::Accepted { .. } => panic!("accepted"),
        }
    }

    fn request(node_rank: usize) -> JoinRequest {
        JoinRequest {
            node_rank,
            incarnation: 1,
            version: VERSION.into(),
            protocol: PROTOCOL_VERSION,
            config: None,
        }
    }

    #[test]
    fn joins_are_refused_naming_the_node_and_the_check() {
        let args = head_args();
        let old = JoinRequest { version: "0.0.1".into(), ..request(1) };
        assert!(join(&args, old).starts_with("node 1: version check failed"), "version");
        assert!(join(&args, request(2)).contains("node rank 2 is out of range"), "rank");
        let mut other = args.config.clone();
        other.engine.step_timeout_ms = 5;
        let mismatched = JoinRequest { config: Some(preflight::shared_config_json(&other)), ..request(1) };
        let why = join(&args, mismatched);
        assert!(
            why.starts_with("node 1: config check failed: engine.step_timeout_ms (head: 60000, node: 5)"),
            "{why}"
        );
        // Everything checks out, but no such actor joined the process groups.
        assert!(join(&args, request(1)).contains("its actor is not visible on the head"));
    }

    #[test]
    fn reports_need_a_joined_incarnation_and_the_same_model() {
        let args = head_args();
        let report =
            NodeReport { node_rank: 1, incarnation: 1, model: args.model.clone(), num_devices: None };
        assert!(args.report(report).unwrap_err().contains("did not join"));
    }
}
