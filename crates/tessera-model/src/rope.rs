//! RoPE frequencies, computed on the host once per model. Follows the Hugging Face definitions
//! (including Llama 3's frequency-dependent scaling) so that positions rotate identically.

use crate::spec::{Llama3RopeScaling, RopeSpec};
use std::f32::consts::PI;

/// Inverse frequency of each rotated pair, `head_dim / 2` of them, in f32 as transformers computes.
pub fn inv_freq(rope: &RopeSpec, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / rope.theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    match &rope.llama3_scaling {
        None => base,
        Some(scaling) => base.into_iter().map(|f| llama3_scale(f, scaling)).collect(),
    }
}

/// Llama 3: long wavelengths are slowed by `factor`, short ones kept, and the band between is
/// interpolated smoothly.
fn llama3_scale(freq: f32, s: &Llama3RopeScaling) -> f32 {
    let old_len = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_len / s.low_freq_factor;
    let high_freq_wavelen = old_len / s.high_freq_factor;
    let wavelen = 2.0 * PI / freq;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / s.factor
    } else {
        let smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

/// `(cos, sin)` tables of `[max_positions, head_dim / 2]`.
pub fn cos_sin_tables(rope: &RopeSpec, head_dim: usize, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let freqs = inv_freq(rope, head_dim);
    let mut cos = Vec::with_capacity(max_positions * freqs.len());
    let mut sin = Vec::with_capacity(max_positions * freqs.len());
    for pos in 0..max_positions {
        for &f in &freqs {
            // The angle is rounded to f32 first, as transformers does, then cos/sin taken exactly.
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_decay_geometrically() {
        let rope = RopeSpec { theta: 10_000.0, llama3_scaling: None };
        let f = inv_freq(&rope, 8);
        assert_eq!(f[0], 1.0);
        assert!((f[2] - 0.01).abs() < 1e-7, "{f:?}");
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RopeSpec { theta: 500_000.0, llama3_scaling: None };
        let scaled = RopeSpec { llama3_scaling: Some(scaling), ..plain.clone() };
        let (a, b) = (inv_freq(&plain, 128), inv_freq(&scaled, 128));
        assert_eq!(a[0], b[0], "highest frequency is untouched");
        assert!((a[63] / 8.0 - b[63]).abs() <= f32::EPSILON * a[63], "lowest frequency is divided by factor");
        let mid = (0..64).find(|&i| a[i] != b[i] && (a[i] / 8.0 - b[i]).abs() > 1e-12).unwrap();
        assert!(b[mid] > a[mid] / 8.0 && b[mid] < a[mid], "the band between is interpolated");
    }
}
