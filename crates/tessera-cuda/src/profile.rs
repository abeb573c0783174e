//! Sizing the KV cache by profiling: run one forward pass at the largest batch the scheduler may
//! plan and the GPU sampler over `max_num_seqs` rows, measure the memory pool's peak, and give the KV cache what is left of
//! `gpu_memory_utilization` of the card after weights, that peak, the CUDA graphs' reserve, and
//! memory outside the pool (context, modules, other processes).
//!
//! The graphs are captured later (they need the KV cache), and their activations live in the
//! driver's graph pool, apart from the stream-ordered pool eager steps use, so both stay reserved.
//! Their reserve is measured here as the pool's peak during one eager decode forward of the
//! largest captured size shaped like a graph's, plus the graphs' static buffers. Graphs launched
//! on one stream share their physical memory, so the largest one sets the need; the capture
//! reports what the driver really reserved (`GraphReport`).

use crate::backend::CudaBackend;
use crate::device::backend_err;
use crate::graphs::{decode_activation_peak, static_bytes};
use crate::sampling::SamplingRow;
use crate::tensor::CudaTensor;
use tessera_model::{Backend, Model, ModelError, ModelInput, Result, SeqChunk};

/// The scheduler's limits that bound one step's activations.
#[derive(Clone, Copy, Debug)]
pub struct ProfileLimits {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    pub block_size: usize,
    pub gpu_memory_utilization: f64,
    /// The largest decode batch captured as a CUDA graph; 0 when graphs are off.
    pub max_graph_batch: usize,
}

/// What profiling measured, in bytes, and the resulting block count.
#[derive(Clone, Copy, Debug)]
pub struct ProfileReport {
    pub total: usize,
    pub weights: usize,
    pub peak_activations: usize,
    /// Set aside for the decode CUDA graphs (their activations and static buffers).
    pub graph_reserve: usize,
    pub outside_pool: usize,
    pub kv_cache: usize,
    pub bytes_per_block: usize,
    pub num_blocks: usize,
}

/// The worst-case batch: `max_num_batched_tokens` tokens of prompt, in as few sequences as
/// `max_model_len` allows (at most `max_num_seqs`), each wanting logits.
fn dummy_batch(limits: &ProfileLimits, vocab: usize) -> (Vec<Vec<u32>>, usize) {
    let mut remaining = limits.max_num_batched_tokens;
    let mut seqs = Vec::new();
    while remaining > 0 && seqs.len() < limits.max_num_seqs {
        let len = remaining.min(limits.max_model_len);
        seqs.push((0..len).map(|i| ((i * 7919) % vocab) as u32).collect::<Vec<u32>>());
        remaining -= len;
    }
    let blocks = seqs.iter().map(|s| s.len().div_ceil(limits.block_size)).sum();
    (seqs, blocks)
}

/// Samples `max_num_seqs` rows of zero logits on the device, through every filter, so the pool's
/// peak covers the sampler's f32 scratch of a full decode batch too.
fn sample_max_num_seqs(backend: &CudaBackend, rows: usize, vocab: usize) -> Result<()> {
    let data = backend.device.stream.alloc_zeros(rows * vocab).map_err(backend_err("alloc"))?;
    let logits = CudaTensor { rows, cols: vocab, data };
    let row = SamplingRow {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        min_p: 0.05,
        repetition_penalty: 1.0,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        uniform: 0.5,
        penalized: &[],
    };
    backend.sample_rows(&logits, &vec![row; rows]).map(drop)
}

/// Runs the profiling pass on `model` and returns the number of KV blocks this rank can hold.
pub fn profile_num_blocks(
    backend: &CudaBackend,
    model: &Model<CudaBackend>,
    limits: &ProfileLimits,
) -> Result<ProfileReport> {
    backend.reset_peak_memory()?;
    let before = backend.memory_stats()?;
    let (seqs, num_blocks) = dummy_batch(limits, model.spec().vocab_size);
    let shape = model.kv_cache_shape(num_blocks, limits.block_size);
    let temp_cache_bytes = shape.bytes_per_block(2) * num_blocks;
    let (prefill_peak, graph_activations) = {
        let mut cache = backend.alloc_kv_cache(shape)?;
        let mut next_block = 0u32;
        let tables: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                let n = s.len().div_ceil(limits.block_size) as u32;
                next_block += n;
                (next_block - n..next_block).collect()
            })
            .collect();
        let chunks: Vec<SeqChunk<'_>> = seqs
            .iter()
            .zip(&tables)
            .map(|(s, t)| SeqChunk {
                new_tokens: s,
                num_computed_tokens: 0,
                block_table: t,
                wants_logits: true,
            })
            .collect();
        let input = ModelInput::build(limits.block_size, &chunks);
        let batch = backend.prepare(&input)?;
        // The budget-filling prefill is also the most common step shape under load (a full
        // token budget), so its GEMMs are tuned here (gemm_tune.rs); the tuning's scratch
        // buffer then counts in the peak, which only errs on the safe side.
        let tuner = &backend.device.gemm_tuner;
        let logits = tuner.while_tuning(|| model.forward(backend, &batch, &mut cache))?;
        backend.to_host(&logits)?;
        drop(logits);
        sample_max_num_seqs(backend, limits.max_num_seqs, model.spec().vocab_size)?;
        let prefill_peak = backend.memory_stats()?.pool_used_peak;
        let graph_activations = match limits.max_graph_batch {
            0 => 0,
            rows => decode_activation_peak(backend, model, &mut cache, rows)?,
        };
        (prefill_peak, graph_activations)
    };
    let after = backend.memory_stats()?;
    let weights = before.pool_used;
    let peak_activations = prefill_peak.saturating_sub(weights + temp_cache_bytes);
    let graph_reserve = match limits.max_graph_batch {
        0 => 0,
        rows => {
            let vocab = model.spec().vocab_size;
            graph_activations + static_bytes(rows, vocab, limits.max_model_len, limits.block_size)
        }
    };
    let outside_pool = (after.total - after.free).saturating_sub(after.pool_reserved);
    let budget = (after.total as f64 * limits.gpu_memory_utilization) as usize;
    let kv_cache = budget.saturating_sub(outside_pool + weights + peak_activations + graph_reserve);
    let bytes_per_block = model.kv_cache_shape(1, limits.block_size).bytes_per_block(2);
    let report = ProfileReport {
        total: after.total,
        weights,
        peak_activations,
        graph_reserve,
        outside_pool,
        kv_cache,
        bytes_per_block,
        num_blocks: kv_cache / bytes_per_block,
    };
    backend.trim_memory_pool()?;
    if report.num_blocks == 0 {
        return Err(ModelError::Backend(format!(
            "no memory left for the KV cache: {report:?}; raise cache.gpu_memory_utilization or lower \
             scheduler.max_num_batched_tokens (or engine.cuda_graph_batch_sizes)"
        )));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_batch_fills_the_token_budget_within_the_limits() {
        let limits = ProfileLimits {
            max_num_batched_tokens: 100,
            max_num_seqs: 8,
            max_model_len: 30,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            max_graph_batch: 0,
        };
        let (seqs, blocks) = dummy_batch(&limits, 50);
        assert_eq!(seqs.iter().map(Vec::len).collect::<Vec<_>>(), vec![30, 30, 30, 10]);
        assert_eq!(blocks, 2 + 2 + 2 + 1);
        assert!(seqs.iter().flatten().all(|&t| t < 50));
    }
}
