use super::{check, ConfigError};
use serde::{Deserialize, Serialize};

/// The paged KV cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Number of KV blocks; `None` sizes the cache from memory (profiled on GPUs).
    pub num_blocks: Option<usize>,
    /// Fraction of device memory the engine may use (weights + activations + KV cache).
    pub gpu_memory_utilization: f64,
    /// Bytes of KV cache for the CPU backend when `num_blocks` is not set.
    pub cpu_kv_cache_bytes: usize,
    /// Reuse full blocks of identical prefixes across requests.
    pub enable_prefix_caching: bool,
    /// Record `KvEvent`s (block stored / removed) for a prefix-aware router. Off by default: the
    /// events buffer only while someone drains them.
    pub enable_kv_events: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            block_size: 16,
            num_blocks: None,
            gpu_memory_utilization: 0.9,
            cpu_kv_cache_bytes: 256 << 20,
            enable_prefix_caching: true,
            enable_kv_events: false,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            self.block_size.is_power_of_two() && (1..=256).contains(&self.block_size),
            || format!("{path}.block_size"),
            || format!("must be a power of two between 1 and 256, got {}", self.block_size),
        )?;
        check(
            self.num_blocks != Some(0),
            || format!("{path}.num_blocks"),
            || "must be at least 1".to_string(),
        )?;
        check(
            !self.enable_kv_events || self.enable_prefix_caching,
            || format!("{path}.enable_kv_events"),
            || "needs enable_prefix_caching = true (events describe the prefix cache)".to_string(),
        )?;
        check(
            self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0,
            || format!("{path}.gpu_memory_utilization"),
            || format!("must be in (0, 1], got {}", self.gpu_memory_utilization),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("cache.block_size", CacheConfig { block_size: 12, ..Default::default() }),
            ("cache.num_blocks", CacheConfig { num_blocks: Some(0), ..Default::default() }),
            (
                "cache.enable_kv_events",
                CacheConfig { enable_kv_events: true, enable_prefix_caching: false, ..Default::default() },
            ),
        ];
        for (key, config) in cases {
            assert_eq!(config.validate("cache").unwrap_err().key, key);
        }
        CacheConfig::default().validate("cache").unwrap();
    }
}
