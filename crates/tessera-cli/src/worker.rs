//! `tessera worker --join HEAD:PORT --node-rank N`: one node of a multi-node deployment. Exits 0
//! when the head shuts the deployment down, non-zero when refused (wrong cookie, version, config
//! or model) or when the head goes away.

use crate::settings;
use anyhow::anyhow;
use clap::Args;
use std::path::Path;
use std::time::Duration;
use tessera_cluster::{run_worker, WorkerOptions};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The head's cluster address (its cluster.listen), HOST:PORT.
    #[arg(long)]
    join: String,
    /// This node's rank, 1..cluster.nodes (the head is 0).
    #[arg(long, env = "TESSERA_NODE_RANK")]
    node_rank: usize,
    /// text or json (logging.format).
    #[arg(long)]
    log_format: Option<String>,
}

/// With `--config` the node uses its own configuration, which the head checks against its own;
/// without, it adopts the head's (the cookie still comes from the environment or defaults).
pub fn run(args: WorkerArgs, config_file: Option<&Path>) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(format) = &args.log_format {
        overrides.push(("logging.format".to_string(), format.as_str().into()));
    }
    let config = settings::load(config_file, &overrides)?;
    crate::serve::init_logging(&config);
    if args.node_rank == 0 {
        return Err(anyhow!("--node-rank 0 is the head, which runs `tessera serve`; workers are 1.."));
    }
    let options = WorkerOptions {
        join: args.join,
        node_rank: args.node_rank,
        cookie: config.cluster.cookie.clone(),
        connect_timeout: Duration::from_millis(config.cluster.join_timeout_ms),
        config: config_file.map(|_| config),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match runtime.block_on(run_worker(options)) {
        Ok(reason) => {
            tracing::info!(%reason, "the head shut the deployment down; exiting");
            // Rank threads may still be parked in a collective; they end with the process.
            std::process::exit(0);
        }
        Err(err) => {
            tracing::error!(%err, "worker stopped");
            Err(anyhow!("worker node {}: {err}", args.node_rank))
        }
    }
}
