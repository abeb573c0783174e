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

/// The generator's mixing function (also in kernels/embedding.cu's `fill_dummy`).
pub fn splitmix64(mut x: u64) -> u64 {
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

/// One tensor's part as the generator defines it: element `i` of the part (row-major, `cols`
/// wide) is `center + half_width * unit(splitmix64(base ^ global))`, where `global` is its index in
/// the full tensor (`full_cols` wide, the part starting at `row0`, `col0`) and `unit` maps the top
/// 24 bits to [-1, 1). A backend may evaluate it on its device instead of uploading host values
/// (`Backend::upload_dummy`); it must then compute exactly this, in f32 without fused
/// multiply-add, rounded once to its storage type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DummyFill {
    pub base: u64,
    pub center: f32,
    pub half_width: f32,
    pub rows: usize,
    pub cols: usize,
    pub row0: usize,
    pub col0: usize,
    pub full_cols: usize,
    /// A 1-D tensor (norm weight, bias): `rows` values, `cols` 1.
    pub vector: bool,
}

impl DummyFill {
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// The f32 value of element `i` of the part.
    pub fn value(&self, i: usize) -> f32 {
        let global = (self.row0 + i / self.cols) * self.full_cols + self.col0 + i % self.cols;
        // 24 random bits mapped to [-1, 1) (exact in f32).
        let unit = (splitmix64(self.base ^ global as u64) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        self.center + self.half_width * unit
    }
}

impl DummySource {
    /// The generator of `shard` of tensor `name` (full shape `full_shape`).
    pub fn fill(&self, name: &str, full_shape: &[usize], shard: Shard) -> DummyFill {
        let (center, half_width) = value_range(name, full_shape);
        let shape = shard.shape(full_shape);
        let full_cols = if full_shape.len() == 2 { full_shape[1] } else { 1 };
        let cols = if shape.len() == 2 { shape[1] } else { 1 };
        let (row0, col0) = match shard {
            Shard::Full => (0, 0),
            Shard::Rows { rank, .. } => (rank * shape[0], 0),
            Shard::Cols { rank, .. } => (0, rank * cols),
        };
        let rows = shape.iter().product::<usize>() / cols.max(1);
        DummyFill {
            base: splitmix64(self.seed ^ name_hash(name)),
            center,
            half_width,
            rows,
            cols,
            row0,
            col0,
            full_cols,
            vector: full_shape.len() == 1,
        }
    }
}

impl WeightSource for DummySource {
    fn get(&self, name: &str, full_shape: &[usize], shard: Shard, dtype: DType) -> Result<HostTensor> {
        let fill = self.fill(name, full_shape, shard);
        let elem = dtype.size_bytes();
        let mut data = vec![0u8; fill.numel() * elem];
        // A 70B shape is ~140 GB of values: generate in parallel, chunk by chunk. Each value depends
        // only on its global index, so the split does not change the result.
        data.par_chunks_mut(CHUNK_ELEMS * elem).enumerate().for_each(|(chunk, out)| {
            for (j, bytes) in out.chunks_exact_mut(elem).enumerate() {
                let value = fill.value(chunk * CHUNK_ELEMS + j);
                match dtype {
                    DType::F32 => bytes.copy_from_slice(&value.to_le_bytes()),
                    DType::F16 => bytes.copy_from_slice(&half::f16::from_f32(value).to_le_bytes()),
                    DType::Bf16 => bytes.copy_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
                }
            }
        });
        Ok(HostTensor { dtype, shape: shard.shape(full_shape), data })
    }

    fn dummy(&self) -> Option<&DummySource> {
        Some(self)
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
    fn a_shard_fill_indexes_the_full_tensor() {
        let source = DummySource::new(3);
        let full = source.fill("layers.0.w", &[8, 6], Shard::Full);
        let cols = source.fill("layers.0.w", &[8, 6], Shard::Cols { rank: 1, world: 2 });
        assert_eq!((cols.rows, cols.cols, cols.row0, cols.col0, cols.full_cols), (8, 3, 0, 3, 6));
        // Element (2, 1) of rank 1's columns is element (2, 4) of the full tensor.
        assert_eq!(cols.value(2 * 3 + 1), full.value(2 * 6 + 4));
        let rows = source.fill("layers.0.w", &[8, 6], Shard::Rows { rank: 3, world: 4 });
        assert_eq!((rows.rows, rows.row0), (2, 6));
        assert_eq!(rows.value(7), full.value(6 * 6 + 7));
        let vector = source.fill("norm.weight", &[5], Shard::Full);
        assert_eq!((vector.rows, vector.cols, vector.numel()), (5, 1, 5));
    }

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
