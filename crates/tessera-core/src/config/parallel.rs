use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// How the model is split across devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Number of tensor-parallel ranks; must divide the model's attention and KV heads.
    pub tensor_parallel_size: usize,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig { tensor_parallel_size: 1 }
    }
}

impl ParallelConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            (1..=64).contains(&self.tensor_parallel_size),
            || format!("{path}.tensor_parallel_size"),
            || format!("must be between 1 and 64, got {}", self.tensor_parallel_size),
        )
    }
}
