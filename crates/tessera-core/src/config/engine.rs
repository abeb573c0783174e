use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// What the engine does when a worker fails (panics, errors, or misses its deadline).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnWorkerFailure {
    /// Fail in-flight requests, rebuild the workers (fresh KV cache and collectives), go on.
    #[default]
    Restart,
    /// Fail in-flight requests and stop; the process exits non-zero.
    Exit,
}

/// Supervision of the step loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub on_worker_failure: OnWorkerFailure,
    /// A step that takes longer than this fails the worker group.
    pub step_timeout_ms: u64,
    /// Rebuilds in a row without a successful step before the engine gives up and stops.
    pub max_consecutive_restarts: u32,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            on_worker_failure: OnWorkerFailure::Restart,
            step_timeout_ms: 60_000,
            max_consecutive_restarts: 3,
        }
    }
}

impl EngineSection {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(self.step_timeout_ms >= 1, || format!("{path}.step_timeout_ms"), || "must be at least 1".into())
    }
}
