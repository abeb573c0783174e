//! What every handler shares.

use crate::chat_template::ChatTemplate;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tessera_core::config::ServerConfig;
use tessera_engine::Engine;

pub struct AppState {
    pub engine: Engine,
    pub config: ServerConfig,
    pub model_name: String,
    pub chat_template: ChatTemplate,
    pub metrics: Option<PrometheusHandle>,
    /// Set on SIGTERM: readiness fails and new generation requests are refused.
    pub draining: AtomicBool,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
