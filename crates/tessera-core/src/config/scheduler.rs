use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// Batching and admission policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Sequences in one step at most.
    pub max_num_seqs: usize,
    /// Tokens (prefill + decode) in one step at most: the token budget.
    pub max_num_batched_tokens: usize,
    /// Requests waiting for admission at most; beyond it new requests are refused as overloaded.
    pub max_waiting_requests: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_num_seqs: 256, max_num_batched_tokens: 8192, max_waiting_requests: 4096 }
    }
}

impl SchedulerConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            self.max_num_seqs >= 1,
            || format!("{path}.max_num_seqs"),
            || "must be at least 1".to_string(),
        )?;
        check(
            self.max_num_batched_tokens >= self.max_num_seqs,
            || format!("{path}.max_num_batched_tokens"),
            || {
                format!(
                    "must be at least max_num_seqs ({}) so every running sequence can decode, got {}",
                    self.max_num_seqs, self.max_num_batched_tokens
                )
            },
        )
    }
}
