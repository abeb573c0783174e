//! The paged KV cache and attention over it. K/V live in blocks of `block_size` token slots; a
//! sequence finds its tokens through its block table, exactly as the GPU kernels do.

use crate::tensor::CpuTensor;
use rayon::prelude::*;
use tessera_model::{KvCacheShape, ModelInput, QkvLayout};

/// Per layer, K and V of `[num_blocks * block_size slots, num_kv_heads, head_dim]`.
pub struct CpuKvCache {
    pub shape: KvCacheShape,
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl CpuKvCache {
    pub fn new(shape: KvCacheShape) -> Self {
        let len = shape.num_blocks * shape.block_size * shape.num_kv_heads * shape.head_dim;
        CpuKvCache {
            shape,
            layers: (0..shape.num_layers).map(|_| (vec![0.0; len], vec![0.0; len])).collect(),
        }
    }

    fn slot_width(&self) -> usize {
        self.shape.num_kv_heads * self.shape.head_dim
    }

    /// Copies each token's k and v heads (from the fused q|k|v rows) into its slot.
    pub fn write(&mut self, layer: usize, qkv: &CpuTensor, slot_mapping: &[u32], layout: QkvLayout) {
        let width = self.slot_width();
        assert_eq!(width, layout.kv_width(), "cache heads do not match the layout");
        let num_slots = self.shape.num_blocks * self.shape.block_size;
        let (k_cache, v_cache) = &mut self.layers[layer];
        for (row, &slot) in qkv.data.chunks_exact(layout.row_width()).zip(slot_mapping) {
            let slot = slot as usize;
            assert!(slot < num_slots, "slot {slot} outside a cache of {num_slots} slots");
            let k = &row[layout.q_width()..layout.q_width() + width];
            let v = &row[layout.q_width() + width..];
            k_cache[slot * width..(slot + 1) * width].copy_from_slice(k);
            v_cache[slot * width..(slot + 1) * width].copy_from_slice(v);
        }
    }

    /// Causal attention of every token's q heads over its sequence's cached K/V.
    pub fn attention(
        &self,
        layer: usize,
        qkv: &CpuTensor,
        input: &ModelInput,
        layout: QkvLayout,
    ) -> CpuTensor {
        let mut out = CpuTensor::zeros(qkv.rows, layout.q_width());
        let (k_cache, v_cache) = &self.layers[layer];
        // One task per token row: rows are independent, and a decode batch has one row per sequence.
        let row_seq = row_to_seq(input);
        out.data.par_chunks_mut(layout.q_width()).enumerate().for_each(|(row, out_row)| {
            let seq = &input.seqs[row_seq[row]];
            // Causality: the token at `pos` sees positions 0..=pos.
            let pos = seq.context_len - seq.query_len + (row - seq.query_start);
            let q_row = &qkv.row(row)[..layout.q_width()];
            attend_row(
                q_row,
                k_cache,
                v_cache,
                &seq.block_table,
                self.shape.block_size,
                pos + 1,
                layout,
                out_row,
            );
        });
        out
    }
}

/// Index of the sequence each token row belongs to.
fn row_to_seq(input: &ModelInput) -> Vec<usize> {
    let mut map = vec![0; input.num_tokens()];
    for (s, seq) in input.seqs.iter().enumerate() {
        map[seq.query_start..seq.query_start + seq.query_len].fill(s);
    }
    map
}

#[allow(clippy::too_many_arguments)]
fn attend_row(
    q_row: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    block_table: &[u32],
    block_size: usize,
    num_keys: usize,
    layout: QkvLayout,
    out: &mut [f32],
) {
    let d = layout.head_dim;
    let width = layout.kv_width();
    let group = layout.num_heads / layout.num_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let slots: Vec<usize> =
        (0..num_keys).map(|j| block_table[j / block_size] as usize * block_size + j % block_size).collect();
    let mut scores = vec![0.0f32; num_keys];
    for h in 0..layout.num_heads {
        let q = &q_row[h * d..(h + 1) * d];
        let kv_offset = (h / group) * d;
        for (score, &slot) in scores.iter_mut().zip(&slots) {
            let k = &k_cache[slot * width + kv_offset..slot * width + kv_offset + d];
            *score = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let o = &mut out[h * d..(h + 1) * d];
        o.fill(0.0);
        for (&p, &slot) in scores.iter().zip(&slots) {
            let v = &v_cache[slot * width + kv_offset..slot * width + kv_offset + d];
            o.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
        }
        o.iter_mut().for_each(|o| *o /= total);
    }
}
