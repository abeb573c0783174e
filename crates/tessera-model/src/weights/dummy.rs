//! Seeded random weights. Each element is a pure function of (seed, tensor name, element index in
//! the full tensor), so every tensor-parallel rank generates exactly its slice of the same full
//! model, and a TP=4 run of dummy weights computes the same function as a TP=1 run.

use super::{HostTensor, Shard, WeightSource};
use crate::error::Result;
use crate::spec::DType;
use rayon::prelude::*;

/// Elements generated per parallel task.
const CHUNK_ELEMS: usize = 1 << 16;

pub struct DummySource {
    seed: u64,
}

impl DummySource {
    pub fn new(seed: u64) -> Self {
        DummySource { seed }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a: a stable hash of the tensor name (std's hasher is randomised per process).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Norm weights are ones (as at initialisation); everything else is uniform with a standard
/// deviation of 1/sqrt(fan_in), which keeps activations at a sane scale through deep stacks.
fn value_range(name: &str, full_shape: &[usize]) -> (f32, f32) {
    if name.ends_with("norm.weight") {
        (1.0, 0.0)
    } else if name.ends_with("bias") {
        (0.0, 0.02)
    } else if name.contains("embed_tokens") {
        (0.0, 1.0)
    } else {
        let fan_in = *full_shape.last().unwrap_or(&1) as f32;
        (0.0, (3.0 / fan_in).sqrt())
    }
}

impl WeightSource for DummySource {
    fn get(&self, name: &str, full_shape: &[usize], shard: Shard, dtype: DType) -> Result<HostTensor> {
        let (center, half_width) = value_range(name, full_shape);
        let base = splitmix64(self.seed ^ name_hash(name));
        let shape = shard.shape(full_shape);
        let full_cols = if full_shape.len() == 2 { full_shape[1] } else { 1 };
        let cols = if shape.len() == 2 { shape[1] } else { 1 };
        let (row0, col0) = match shard {
            Shard::Full => (0, 0),
            Shard::Rows { rank, .. } => (rank * shape[0], 0),
            Shard::Cols { rank, .. } => (0, rank * cols),
        };
        let numel: usize = shape.iter().product();
        let elem = dtype.size_bytes();
        let mut data = vec![0u8; numel * elem];
        // A 70B shape is ~140 GB of values: generate in parallel, chunk by chunk. Each value depends
        // only on its global index, so the split does not change the result.
        data.par_chunks_mut(CHUNK_ELEMS * elem).enumerate().for_each(|(chunk, out)| {
            for (j, bytes) in out.chunks_exact_mut(elem).enumerate() {
                let i = chunk * CHUNK_ELEMS + j;
                let global = (row0 + i / cols) * full_cols + col0 + i % cols;
                // 24 random bits mapped to [-1, 1).
                let unit = (splitmix64(base ^ global as u64) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                let value = center + half_width * unit;
                match dtype {
                    DType::F32 => bytes.copy_from_slice(&value.to_le_bytes()),
                    DType::F16 => bytes.copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
                    DType::Bf16 => bytes.copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
                }
            }
        });
        Ok(HostTensor { dtype, shape, data })
    }

    fn contains(&self, name: &str) -> bool {
        // The model asks for lm_head only when embeddings are untied; dummy sources have everything.
        !name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_slices_of_the_full_tensor() {
        let source = DummySource::new(7);
        let full = source.get("w", &[4, 6], Shard::Full, DType::F32).unwrap();
        let shards = [
            Shard::Rows { rank: 1, world: 2 },
            Shard::Rows { rank: 3, world: 4 },
            Shard::Cols { rank: 0, world: 2 },
            Shard::Cols { rank: 2, world: 3 },
        ];
        for shard in shards {
            let part = source.get("w", &[4, 6], shard, DType::F32).unwrap();
            assert_eq!(part, full.clone().slice(shard), "{shard:?}");
        }
    }

    #[test]
    fn shards_spanning_several_parallel_chunks_are_slices() {
        // 4 x 50_000 elements: several CHUNK_ELEMS chunks, with chunk borders inside rows.
        let source = DummySource::new(3);
        let shape = [4, 50_000];
        let full = source.get("w", &shape, Shard::Full, DType::Bf16).unwrap();
        for shard in [Shard::Rows { rank: 1, world: 2 }, Shard::Cols { rank: 1, world: 4 }] {
            let part = source.get("w", &shape, shard, DType::Bf16).unwrap();
            assert_eq!(part, full.clone().slice(shard), "{shard:?}");
        }
    }

    #[test]
    fn seeds_and_names_change_values() {
        let a = DummySource::new(1).get("a", &[8], Shard::Full, DType::F32).unwrap();
        let b = DummySource::new(2).get("a", &[8], Shard::Full, DType::F32).unwrap();
        let c = DummySource::new(1).get("b", &[8], Shard::Full, DType::F32).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.to_f32().iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
