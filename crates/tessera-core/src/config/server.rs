use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// The OpenAI-compatible HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Accepted bearer tokens; empty means no authentication. Never logged or shown.
    pub api_keys: Vec<String>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// Largest `n` (choices per request) accepted.
    pub max_n: u32,
    /// On SIGTERM, in-flight requests get this long to finish before the process exits.
    pub shutdown_timeout_ms: u64,
    /// `/ready` fails when the engine has work but no step completed for this long.
    pub ready_max_step_age_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            api_keys: Vec::new(),
            max_body_bytes: 4 << 20,
            max_n: 16,
            shutdown_timeout_ms: 30_000,
            ready_max_step_age_ms: 30_000,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(!self.host.is_empty(), || format!("{path}.host"), || "must not be empty".into())?;
        check(
            self.max_body_bytes >= 1024,
            || format!("{path}.max_body_bytes"),
            || "must be at least 1024".into(),
        )?;
        check(
            (1..=128).contains(&self.max_n),
            || format!("{path}.max_n"),
            || "must be between 1 and 128".into(),
        )?;
        check(
            self.api_keys.iter().all(|k| !k.is_empty()),
            || format!("{path}.api_keys"),
            || "keys must not be empty strings".into(),
        )
    }

    /// A copy safe to print: keys replaced by a marker.
    pub fn redacted(&self) -> Self {
        ServerConfig {
            api_keys: self.api_keys.iter().map(|_| "<redacted>".to_string()).collect(),
            ..self.clone()
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs. `RUST_LOG`, when set, overrides `level`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `tessera_engine=debug,info`, ...
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { format: LogFormat::Text, level: "info".into() }
    }
}
