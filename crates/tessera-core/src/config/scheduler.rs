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
    /// Preempted requests return to the queue regardless, so it can briefly hold up to
    /// `max_waiting_requests + max_num_seqs`.
    pub max_waiting_requests: usize,
    /// Split long prompts across steps so running decodes keep their pace. When off, a prompt is
    /// computed in one step, so requests longer than the token budget are refused at admission.
    pub enable_chunked_prefill: bool,
    /// Most prompt tokens one sequence computes in one step; 0 means no limit beyond the budget.
    /// Lets several long prompts progress together instead of one after the other.
    pub long_prefill_token_threshold: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_waiting_requests: 4096,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
        }
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
        )?;
        check(
            self.max_waiting_requests >= 1,
            || format!("{path}.max_waiting_requests"),
            || "must be at least 1".to_string(),
        )?;
        check(
            self.enable_chunked_prefill || self.long_prefill_token_threshold == 0,
            || format!("{path}.long_prefill_token_threshold"),
            || "must be 0 when enable_chunked_prefill is false (prompts are not split)".to_string(),
        )
    }

    /// Most tokens one sequence may compute in one step under this policy.
    pub fn max_tokens_per_seq(&self) -> usize {
        match self.long_prefill_token_threshold {
            0 => self.max_num_batched_tokens,
            n => n.min(self.max_num_batched_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("scheduler.max_num_seqs", SchedulerConfig { max_num_seqs: 0, ..Default::default() }),
            (
                "scheduler.max_num_batched_tokens",
                SchedulerConfig { max_num_batched_tokens: 8, ..Default::default() },
            ),
            (
                "scheduler.max_waiting_requests",
                SchedulerConfig { max_waiting_requests: 0, ..Default::default() },
            ),
            (
                "scheduler.long_prefill_token_threshold",
                SchedulerConfig {
                    enable_chunked_prefill: false,
                    long_prefill_token_threshold: 64,
                    ..Default::default()
                },
            ),
        ];
        for (key, config) in cases {
            assert_eq!(config.validate("scheduler").unwrap_err().key, key);
        }
        SchedulerConfig::default().validate("scheduler").unwrap();
    }

    #[test]
    fn per_seq_cap_follows_threshold() {
        assert_eq!(SchedulerConfig::default().max_tokens_per_seq(), 8192);
        let config = SchedulerConfig { long_prefill_token_threshold: 512, ..Default::default() };
        assert_eq!(config.max_tokens_per_seq(), 512);
    }
}
