//! `tessera serve`: the engine behind the OpenAI-compatible server, until SIGTERM or Ctrl-C
//! (drain, exit 0) or an engine that stopped for good (exit 1).

use crate::args::ModelArgs;
use crate::settings::Override;
use anyhow::Context;
use clap::Args;
use std::time::Duration;
use tessera_cluster::Head;
use tessera_core::config::LogFormat;
use tessera_core::EngineConfig;
use tessera_engine::{Engine, EngineOptions, HealthState};
use tokio::sync::watch;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Accepted API key (server.api_keys); may be repeated.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Model name reported and required in requests (model.served_model_name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// text or json (logging.format).
    #[arg(long)]
    log_format: Option<String>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = self.model.overrides();
        let mut set = |key: &str, value: config::Value| out.push((key.to_string(), value));
        if let Some(host) = &self.host {
            set("server.host", host.as_str().into());
        }
        if let Some(port) = self.port {
            set("server.port", (port as u64).into());
        }
        if !self.api_keys.is_empty() {
            set("server.api_keys", self.api_keys.clone().into());
        }
        if let Some(name) = &self.served_model_name {
            set("model.served_model_name", name.as_str().into());
        }
        if let Some(format) = &self.log_format {
            set("logging.format", format.as_str().into());
        }
        out
    }
}

pub fn init_logging(config: &EngineConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.level));
    // Colours only on a terminal: logs redirected to a file stay plain text for grep and scripts.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn run(config: EngineConfig) -> anyhow::Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = runtime.block_on(serve(config))?;
    std::process::exit(code);
}

/// How long the process waits at exit for its worker threads to free their devices.
const EXIT_GRACE: Duration = Duration::from_secs(15);

async fn termination() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}

/// Resolves when the engine has stopped for good (it will not serve again).
async fn engine_stopped(engine: Engine) {
    while engine.health().state() != HealthState::Stopped {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::error!(reason = ?engine.health().reason(), "engine stopped; exiting");
}

/// Resolves when a lost node must stop the deployment (`cluster.on_node_failure = "exit"`).
fn cluster_failed(head: Option<&Head>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let fatal = head.map(Head::fatal);
    async move {
        match fatal {
            Some(fatal) => {
                let reason = fatal.await;
                tracing::error!(%reason, "cluster.on_node_failure = \"exit\"; exiting");
            }
            None => std::future::pending().await,
        }
    }
}

/// With a `cluster` section, waits for every worker node to join and pass pre-flight (before
/// any weight is loaded); the engine's group then spans the nodes.
async fn start_cluster(config: &EngineConfig) -> anyhow::Result<Option<Head>> {
    if !config.cluster.is_multi_node() {
        return Ok(None);
    }
    let head = Head::start(config).await.map_err(anyhow::Error::msg).context("starting the cluster head")?;
    if let Err(err) = head.wait_for_nodes().await {
        head.shutdown("the head could not start").await;
        return Err(anyhow::Error::msg(err).context("waiting for the cluster's nodes"));
    }
    Ok(Some(head))
}

async fn serve(config: EngineConfig) -> anyhow::Result<i32> {
    tracing::info!(config = ?config.redacted(), "starting");
    let head = start_cluster(&config).await?;
    let options = EngineOptions { group: head.as_ref().map(Head::group_provider), ..Default::default() };
    let engine = match Engine::start_with(config.clone(), options).await {
        Ok(engine) => engine,
        Err(err) => {
            if let Some(head) = &head {
                head.shutdown("the head's engine could not start").await;
            }
            return Err(anyhow::Error::new(err).context("starting the engine"));
        }
    };
    if let Some(head) = &head {
        head.fail_engine_on_node_loss(engine.clone());
    }
    let state =
        tessera_server::build_state(engine.clone(), config.server.clone()).map_err(anyhow::Error::msg)?;
    let address = (config.server.host.as_str(), config.server.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {}:{}", config.server.host, config.server.port))?;
    tracing::info!(address = %listener.local_addr()?, model = engine.model_name(), "serving");
    let (exit_tx, exit_rx) = watch::channel(0);
    let node_failure = cluster_failed(head.as_ref());
    let engine_at_exit = engine.clone();
    let shutdown = async move {
        tokio::select! {
            _ = termination() => {}
            _ = engine_stopped(engine) => { let _ = exit_tx.send(1); }
            _ = node_failure => { let _ = exit_tx.send(1); }
        }
    };
    tessera_server::serve(listener, state, shutdown).await?;
    let code = *exit_rx.borrow();
    if let Some(head) = &head {
        head.shutdown("the head is shutting down").await;
    }
    shutdown_engine(&engine_at_exit).await?;
    tracing::info!(code, "stopped");
    Ok(code)
}

/// Shuts `engine` down and waits for its ranks to free their device state, so that the process
/// does not exit under them (see `wait_for_worker_threads`: CUDA's exit handlers under a live
/// rank crash the process).
pub async fn shutdown_engine(engine: &tessera_engine::Engine) -> anyhow::Result<()> {
    engine.shutdown().await;
    let ended = tokio::task::spawn_blocking(|| tessera_engine::wait_for_worker_threads(EXIT_GRACE)).await?;
    if !ended {
        tracing::warn!(grace = ?EXIT_GRACE, "a worker thread is still running at exit");
    }
    Ok(())
}
