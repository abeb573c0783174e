//! `tessera worker`: join the head, pass pre-flight, then serve the head's group builds and steps
//! until the head shuts the deployment down (`Ok`, exit 0) or goes away (`Err`, exit non-zero).

use crate::node::{NodeActor, NodeArgs, NodeContext};
use crate::preflight::{self, VERSION};
use crate::session::{self, worker_node_name, SessionEvent};
use crate::wire::{node_group, HeadMsg, JoinReply, JoinRequest, NodeReport, HEAD_GROUP, PROTOCOL_VERSION};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tessera_core::EngineConfig;
use tokio::sync::mpsc;

pub struct WorkerOptions {
    /// The head's cluster address, `HOST:PORT`.
    pub join: String,
    /// This node's rank, `1..cluster.nodes`.
    pub node_rank: usize,
    /// The node's own effective config; it must match the head's (less node-local keys).
    /// `None` adopts the head's config.
    pub config: Option<EngineConfig>,
    pub cookie: String,
    /// How long to keep trying to reach the head.
    pub connect_timeout: Duration,
}

/// How long a session may take to authenticate, and a join or report to be answered.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

async fn resolve(join: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(join)
        .await
        .map_err(|e| format!("--join {join}: {e}"))?
        .next()
        .ok_or_else(|| format!("--join {join}: no address"))
}

/// Connects to the head until it answers or `timeout` passes, then waits for authentication.
async fn connect(
    server: &ActorRef<ractor_cluster::NodeServerMessage>,
    head: SocketAddr,
    timeout: Duration,
    events: &mut mpsc::UnboundedReceiver<SessionEvent>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ractor_cluster::client_connect(server, head).await {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, %head, "head not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(format!("cannot reach the head at {head}: {err}")),
        }
    }
    let authenticated = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        // The first event of the session says how authentication went.
        match events.recv().await {
            Some(SessionEvent::Authenticated { .. }) => Ok(()),
            Some(SessionEvent::Closed { authenticated: false, .. }) => Err(format!(
                "the head at {head} refused the cluster session: authentication failed \
                 (is cluster.cookie the same on every node?)"
            )),
            Some(SessionEvent::Closed { .. }) => Err(format!("the session with {head} closed while joining")),
            None => Err("cluster session events ended".to_string()),
        }
    })
    .await;
    authenticated.unwrap_or_else(|_| Err(format!("the session with {head} did not authenticate in time")))
}

/// The head's actor, once the session has synchronised process groups.
async fn find_head() -> Result<ActorRef<HeadMsg>, String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some(cell) = ractor::pg::get_members(&HEAD_GROUP.to_string()).into_iter().next() {
            return Ok(cell.into());
        }
        if Instant::now() >= deadline {
            return Err("connected, but the head's actor never appeared".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn answer<T>(result: Result<CallResult<T>, ractor::MessagingErr<HeadMsg>>, what: &str) -> Result<T, String> {
    match result {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(format!("the head did not answer the {what} in time")),
        Ok(CallResult::SenderError) | Err(_) => Err(format!("the head dropped the {what}")),
    }
}

/// Joins and serves until the head shuts down (`Ok` with its reason) or is lost (`Err`).
pub async fn run_worker(options: WorkerOptions) -> Result<String, String> {
    let node_rank = options.node_rank;
    let incarnation: u64 = rand::random();
    let head = resolve(&options.join).await?;
    let context = Arc::new(OnceLock::new());
    let last_ping = Arc::new(Mutex::new(Instant::now()));
    let (shutdown_tx, mut shutdown) = mpsc::unbounded_channel();
    let args = NodeArgs { context: context.clone(), last_ping: last_ping.clone(), shutdown: shutdown_tx };
    let (node, _) =
        Actor::spawn(None, NodeActor, args).await.map_err(|e| format!("starting the node actor: {e}"))?;
    ractor::pg::join(node_group(node_rank, incarnation), vec![node.get_cell()]);

    // This node accepts no connections; its server only owns the outgoing session.
    let local = SocketAddr::new(
        if head.is_ipv4() { "127.0.0.1".parse().unwrap() } else { "::1".parse().unwrap() },
        0,
    );
    let server =
        session::start_node_server(local, &options.cookie, &worker_node_name(node_rank, incarnation)).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    session::subscribe(&server, move |event| {
        let _ = events_tx.send(event);
    })?;
    connect(&server, head, options.connect_timeout, &mut events).await?;
    let head_actor = find_head().await?;

    let own_config = options.config.as_ref().map(preflight::shared_config_json);
    let request = JoinRequest {
        node_rank,
        incarnation,
        version: VERSION.into(),
        protocol: PROTOCOL_VERSION,
        config: own_config,
    };
    let reply = head_actor.call(|r| HeadMsg::Join(request, r), Some(HANDSHAKE_TIMEOUT)).await;
    let (head_config, first_rank, num_ranks) = match answer(reply, "join")? {
        JoinReply::Accepted { config, first_rank, num_ranks } => (config, first_rank, num_ranks),
        JoinReply::Refused(why) => return Err(format!("the head refused this node: {why}")),
    };
    let config = match options.config {
        Some(config) => config,
        None => {
            let mut adopted: EngineConfig =
                serde_json::from_str(&head_config).map_err(|e| format!("the head's config: {e}"))?;
            adopted.cluster.cookie = options.cookie.clone();
            adopted
        }
    };
    let report = NodeReport {
        node_rank,
        incarnation,
        model: preflight::model_fingerprint(&config)
            .map_err(|e| format!("node {node_rank}: model check: {e}"))?,
        num_devices: preflight::device_count(&config)
            .map_err(|e| format!("node {node_rank}: device check: {e}"))?,
    };
    let heartbeat_timeout = Duration::from_millis(config.cluster.heartbeat_timeout_ms);
    // Before the report: the head may build this node's ranks as soon as it accepts it.
    let _ = context.set(NodeContext { config, node_rank, head_ip: head.ip(), first_rank, num_ranks });
    let checked = head_actor.call(|r| HeadMsg::Report(report, r), Some(HANDSHAKE_TIMEOUT)).await;
    answer(checked, "pre-flight report")?.map_err(|why| format!("the head refused this node: {why}"))?;
    *last_ping.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    tracing::info!(node_rank, first_rank, num_ranks, %head, "joined the cluster; serving ranks");

    let outcome = loop {
        let since_ping = last_ping.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        if since_ping > heartbeat_timeout {
            break Err(format!("lost the head: no heartbeat for {} ms", since_ping.as_millis()));
        }
        tokio::select! {
            reason = shutdown.recv() => break Ok(reason.unwrap_or_else(|| "node actor stopped".into())),
            event = events.recv() => match event {
                Some(SessionEvent::Closed { .. }) | None => {
                    // A shutdown cast and the session's close can race; the shutdown wins.
                    break match tokio::time::timeout(Duration::from_millis(500), shutdown.recv()).await {
                        Ok(Some(reason)) => Ok(reason),
                        _ => Err("lost the head: its cluster session closed".to_string()),
                    };
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(heartbeat_timeout / 4) => {}
        }
    };
    node.stop(None);
    server.stop(None);
    outcome
}
