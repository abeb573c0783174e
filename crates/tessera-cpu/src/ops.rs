//! Element-wise and per-row operations of the CPU backend, in f32.

use crate::tensor::CpuTensor;
use rayon::prelude::*;
use tessera_model::QkvLayout;

/// Rows per rayon task: small enough to spread a decode batch, large enough to amortise.
const ROWS_PER_TASK: usize = 8;

/// `x * rsqrt(mean(x^2) + eps) * weight` of one row (the accumulation in f32 like transformers).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

pub fn rms_norm(x: &CpuTensor, weight: &[f32], eps: f32) -> CpuTensor {
    assert_eq!(x.cols, weight.len(), "rms_norm of width {} with a weight of {}", x.cols, weight.len());
    let mut out = CpuTensor::zeros(x.rows, x.cols);
    out.data.par_chunks_mut(x.cols * ROWS_PER_TASK).zip(x.data.par_chunks(x.cols * ROWS_PER_TASK)).for_each(
        |(o, x_rows)| {
            for (o, x) in o.chunks_exact_mut(weight.len()).zip(x_rows.chunks_exact(weight.len())) {
                rms_norm_row(x, weight, eps, o);
            }
        },
    );
    out
}

pub fn add_in_place(residual: &mut CpuTensor, delta: &CpuTensor) {
    assert_eq!((residual.rows, residual.cols), (delta.rows, delta.cols), "residual add of mismatched shapes");
    residual.data.iter_mut().zip(&delta.data).for_each(|(r, d)| *r += d);
}

/// Normalises each q and k head of every fused q|k|v row by its own RMS.
pub fn qk_norm(qkv: &mut CpuTensor, q_weight: &[f32], k_weight: &[f32], eps: f32, layout: QkvLayout) {
    let d = layout.head_dim;
    let mut scratch = vec![0.0; d];
    for row in qkv.data.chunks_exact_mut(layout.row_width()) {
        for h in 0..layout.num_heads + layout.num_kv_heads {
            let weight = if h < layout.num_heads { q_weight } else { k_weight };
            let head = &mut row[h * d..(h + 1) * d];
            rms_norm_row(head, weight, eps, &mut scratch);
            head.copy_from_slice(&scratch);
        }
    }
}

/// Rotates pairs `(i, i + d/2)` of each q and k head (the "rotate half" convention of HF Llama).
pub fn rope(qkv: &mut CpuTensor, positions: &[u32], cos: &[f32], sin: &[f32], layout: QkvLayout) {
    let d = layout.head_dim;
    let half = d / 2;
    assert_eq!(qkv.rows, positions.len(), "rope: one position per row");
    for (row, &pos) in qkv.data.chunks_exact_mut(layout.row_width()).zip(positions) {
        let table = pos as usize * half;
        assert!(table + half <= cos.len(), "position {pos} beyond the RoPE table");
        let (c, s) = (&cos[table..table + half], &sin[table..table + half]);
        for h in 0..layout.num_heads + layout.num_kv_heads {
            let head = &mut row[h * d..(h + 1) * d];
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * c[i] - x2 * s[i];
                head[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn silu_mul(gate_up: &CpuTensor) -> CpuTensor {
    assert_eq!(gate_up.cols % 2, 0, "silu_mul needs a fused gate|up tensor");
    let n = gate_up.cols / 2;
    let mut out = CpuTensor::zeros(gate_up.rows, n);
    for (o, row) in out.data.chunks_exact_mut(n).zip(gate_up.data.chunks_exact(gate_up.cols)) {
        let (gate, up) = row.split_at(n);
        for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
            *o = silu(*g) * u;
        }
    }
    out
}

/// Looks up rows `token - vocab_start` of `table`; tokens outside the table give zero rows.
pub fn embedding(table: &CpuTensor, vocab_start: usize, tokens: &[u32]) -> CpuTensor {
    let mut out = CpuTensor::zeros(tokens.len(), table.cols);
    for (i, &token) in tokens.iter().enumerate() {
        let local = (token as usize).wrapping_sub(vocab_start);
        if local < table.rows {
            out.row_mut(i).copy_from_slice(table.row(local));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_a_known_row() {
        let x = CpuTensor::new(1, 4, vec![1.0, -1.0, 1.0, -1.0]);
        let out = rms_norm(&x, &[1.0, 2.0, 3.0, 4.0], 0.0);
        assert_eq!(out.data, vec![1.0, -2.0, 3.0, -4.0]);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm_elsewhere() {
        let layout = QkvLayout { num_heads: 1, num_kv_heads: 1, head_dim: 4 };
        let original = CpuTensor::new(2, 12, (0..24).map(|i| i as f32 / 10.0).collect());
        let mut qkv = original.clone();
        let (cos, sin) = (vec![1.0, 1.0, 0.6, 0.8], vec![0.0, 0.0, 0.8, 0.6]);
        rope(&mut qkv, &[0, 1], &cos, &sin, layout);
        assert_eq!(qkv.row(0), original.row(0));
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((norm(&qkv.row(1)[..4]) - norm(&original.row(1)[..4])).abs() < 1e-5);
        assert_eq!(&qkv.row(1)[8..], &original.row(1)[8..], "v heads are not rotated");
    }

    #[test]
    fn embedding_zeroes_tokens_of_other_shards() {
        let table = CpuTensor::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let out = embedding(&table, 10, &[11, 3, 10]);
        assert_eq!(out.data, vec![3.0, 4.0, 0.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn silu_mul_gates() {
        let out = silu_mul(&CpuTensor::new(1, 4, vec![0.0, 100.0, 5.0, 2.0]));
        assert_eq!(out.data[0], 0.0);
        assert!((out.data[1] - 200.0).abs() < 1e-3);
    }
}
