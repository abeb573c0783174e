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

/// The step loop: its supervision, and how steps run on the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub on_worker_failure: OnWorkerFailure,
    /// A step that takes longer than this fails the worker group.
    pub step_timeout_ms: u64,
    /// Rebuilds in a row without a successful step before the engine gives up and stops.
    pub max_consecutive_restarts: u32,
    /// Replay decode steps (every sequence computing one token) from CUDA graphs captured at
    /// startup; prefill and mixed steps always run eagerly. Only `device = "cuda"` has graphs.
    pub cuda_graphs: bool,
    /// Batch sizes to capture; a decode batch is padded up to the next one, and one larger than
    /// the largest runs eagerly. Empty means `DEFAULT_GRAPH_BATCH_SIZES`. Sizes above
    /// `scheduler.max_num_seqs` are never used, so they are not captured.
    pub cuda_graph_batch_sizes: Vec<usize>,
    /// Queue the next decode step on the GPU while the host handles this step's tokens, its
    /// input tokens taken on the device from this step's greedy choices, so the GPU does not
    /// wait for the host between steps. Applies to replayed decode steps in which every sequence
    /// is plain greedy, on one GPU (not yet under tensor parallelism). A step queued for a batch
    /// that then changes (a request arrived, stopped on an end-of-sequence token or was aborted)
    /// is discarded: its GPU time is lost, its results are never used.
    pub decode_lookahead: bool,
}

/// vLLM's capture sizes: 1, 2, 4, then every multiple of 8 up to 256. Fine steps keep the padding
/// of a decode batch under 8 rows; each graph costs a capture at startup (milliseconds) and
/// little memory (graphs share one pool for their activations).
pub const DEFAULT_GRAPH_BATCH_SIZES: &[usize] = &[
    1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176,
    184, 192, 200, 208, 216, 224, 232, 240, 248, 256,
];

/// The attention kernel's grid holds at most this many rows.
const MAX_GRAPH_BATCH_SIZE: usize = 65_535;

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            on_worker_failure: OnWorkerFailure::Restart,
            step_timeout_ms: 60_000,
            max_consecutive_restarts: 3,
            cuda_graphs: true,
            cuda_graph_batch_sizes: Vec::new(),
            decode_lookahead: true,
        }
    }
}

impl EngineSection {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check(
            self.step_timeout_ms >= 1,
            || format!("{path}.step_timeout_ms"),
            || "must be at least 1".into(),
        )?;
        let bad = self.cuda_graph_batch_sizes.iter().find(|&&s| s == 0 || s > MAX_GRAPH_BATCH_SIZE);
        check(
            bad.is_none(),
            || format!("{path}.cuda_graph_batch_sizes"),
            || format!("sizes must be between 1 and {MAX_GRAPH_BATCH_SIZE}, got {}", bad.unwrap_or(&0)),
        )
    }

    /// The batch sizes to capture, ascending without repeats, none above `max_num_seqs`; empty
    /// when graphs are off.
    pub fn graph_batch_sizes(&self, max_num_seqs: usize) -> Vec<usize> {
        if !self.cuda_graphs {
            return Vec::new();
        }
        let sizes = match self.cuda_graph_batch_sizes.as_slice() {
            [] => DEFAULT_GRAPH_BATCH_SIZES,
            given => given,
        };
        let mut sizes: Vec<usize> = sizes.iter().copied().filter(|&s| s <= max_num_seqs).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_graph_sizes_are_capped_by_max_num_seqs() {
        let engine = EngineSection::default();
        let sizes = engine.graph_batch_sizes(256);
        assert_eq!(sizes.len(), 35);
        assert_eq!((sizes[0], sizes[3], sizes[34]), (1, 8, 256));
        assert_eq!(engine.graph_batch_sizes(20), vec![1, 2, 4, 8, 16]);
        assert_eq!(engine.graph_batch_sizes(1), vec![1]);
    }

    #[test]
    fn given_sizes_are_sorted_deduplicated_and_capped() {
        let engine = EngineSection { cuda_graph_batch_sizes: vec![64, 3, 64, 1, 512], ..Default::default() };
        assert_eq!(engine.graph_batch_sizes(256), vec![1, 3, 64]);
        let off = EngineSection { cuda_graphs: false, ..engine };
        assert!(off.graph_batch_sizes(256).is_empty());
    }

    #[test]
    fn bad_graph_sizes_name_their_key() {
        for sizes in [vec![0], vec![8, 70_000]] {
            let engine = EngineSection { cuda_graph_batch_sizes: sizes, ..Default::default() };
            assert_eq!(engine.validate("engine").unwrap_err().key, "engine.cuda_graph_batch_sizes");
        }
        EngineSection::default().validate("engine").unwrap();
    }
}
