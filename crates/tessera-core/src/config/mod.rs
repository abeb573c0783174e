//! The one configuration tree. Every section is a serde struct with `deny_unknown_fields` and
//! defaults; `EngineConfig::validate` checks it once at startup and names the key path of the first
//! bad value. Layering (defaults < file < env < flags) happens in the binary, not here.

mod cache;
mod cluster;
mod engine;
mod model;
mod parallel;
mod scheduler;
mod server;

pub use cache::CacheConfig;
pub use cluster::{ClusterConfig, OnNodeFailure};
pub use engine::{EngineSection, OnWorkerFailure, DEFAULT_GRAPH_BATCH_SIZES};
pub use model::{Device, LoadFormat, ModelConfig, WeightDtype};
pub use parallel::ParallelConfig;
pub use scheduler::SchedulerConfig;
pub use server::{LogFormat, LoggingConfig, ServerConfig};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A bad configuration value, with the dotted key path that holds it (e.g. `scheduler.max_num_seqs`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// The whole engine's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Where the model math runs.
    pub device: Device,
    pub model: ModelConfig,
    pub parallel: ParallelConfig,
    pub cache: CacheConfig,
    pub scheduler: SchedulerConfig,
    pub engine: EngineSection,
    pub server: ServerConfig,
    pub logging: LoggingConfig,
    /// Several processes (machines) serving as one deployment.
    pub cluster: ClusterConfig,
}

impl EngineConfig {
    /// Top-level keys, for layers that must tell config keys from other variables.
    pub const SECTIONS: [&'static str; 9] =
        ["device", "model", "parallel", "cache", "scheduler", "engine", "server", "logging", "cluster"];

    /// A copy safe to print or log: secrets replaced by a marker.
    pub fn redacted(&self) -> Self {
        EngineConfig { server: self.server.redacted(), cluster: self.cluster.redacted(), ..self.clone() }
    }

    /// Checks every section; the error carries the full key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate("model")?;
        self.parallel.validate("parallel")?;
        self.cache.validate("cache")?;
        self.scheduler.validate("scheduler")?;
        self.engine.validate("engine")?;
        self.server.validate("server")?;
        self.cluster.validate("cluster", self.parallel.tensor_parallel_size)?;
        Ok(())
    }
}

/// `Err` naming `key` unless `ok`.
pub(crate) fn check(
    ok: bool,
    key: impl FnOnce() -> String,
    message: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { key: key(), message: message() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<EngineConfig>(r#"{"scheduler": {"max_num_seqz": 3}}"#).unwrap_err();
        assert!(err.to_string().contains("max_num_seqz"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key_path() {
        let mut config = EngineConfig::default();
        config.parallel.tensor_parallel_size = 0;
        assert_eq!(config.validate().unwrap_err().key, "parallel.tensor_parallel_size");
    }
}
