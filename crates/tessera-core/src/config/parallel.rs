use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// How the model is split across devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Number of tensor-parallel ranks; must divide the model's attention and KV heads.
    pub tensor_parallel_size: usize,
    /// A collective (all-reduce, gather) that waits longer than this for its peers fails the group.
    pub collective_timeout_ms: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig { tensor_parallel_size: 1, collective_timeout_ms: 30_000 }
    }
}

impl ParallelConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            self.collective_timeout_ms >= 1,
            || format!("{path}.collective_timeout_ms"),
            || "must be at least 1".to_string(),
        )?;
        check(
            (1..=64).contains(&self.tensor_parallel_size),
            || format!("{path}.tensor_parallel_size"),
            || format!("must be between 1 and 64, got {}", self.tensor_parallel_size),
        )
    }
}
