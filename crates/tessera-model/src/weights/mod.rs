//! Where weights come from: safetensors files or a seeded generator. A source hands out one
//! tensor at a time, already sliced for this tensor-parallel rank, in host memory; the backend
//! then converts and uploads it.

mod dummy;
mod safetensors;

pub use dummy::{splitmix64, DummyFill, DummySource};
pub use safetensors::SafetensorsSource;

use crate::error::Result;
use crate::spec::DType;

/// Which part of a 2-D (or 1-D) tensor this rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shard {
    Full,
    /// Split along dim 0 (output features: column-parallel linear, vocab-parallel embedding).
    Rows {
        rank: usize,
        world: usize,
    },
    /// Split along dim 1 (input features: row-parallel linear).
    Cols {
        rank: usize,
        world: usize,
    },
}

impl Shard {
    /// The shape of this rank's part of a tensor of `full` shape.
    pub fn shape(self, full: &[usize]) -> Vec<usize> {
        let mut shape = full.to_vec();
        match self {
            Shard::Full => {}
            Shard::Rows { world, .. } => shape[0] /= world,
            Shard::Cols { world, .. } => shape[1] /= world,
        }
        shape
    }
}

/// A tensor in host memory, little-endian elements of `dtype`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements converted to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => {
                self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            DType::F16 => {
                self.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            DType::Bf16 => {
                self.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
        }
    }

    /// Builds an f32 tensor (tests and small host-side tensors).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        HostTensor { dtype: DType::F32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// Cuts out this rank's part; a shard that does not divide evenly is a caller bug.
    #[cfg(test)]
    pub(crate) fn slice(self, shard: Shard) -> HostTensor {
        match shard {
            Shard::Full => self,
            _ => HostTensor::slice_of(self.dtype, &self.shape, &self.data, shard),
        }
    }

    /// This rank's part of a full tensor held in `data` (e.g. memory-mapped), copied once.
    pub(crate) fn slice_of(dtype: DType, shape: &[usize], data: &[u8], shard: Shard) -> HostTensor {
        let elem = dtype.size_bytes();
        let data = match shard {
            Shard::Full => data.to_vec(),
            Shard::Rows { rank, world } => {
                assert_eq!(shape[0] % world, 0, "rows of {shape:?} split {world} ways");
                let part = data.len() / world;
                data[rank * part..(rank + 1) * part].to_vec()
            }
            Shard::Cols { rank, world } => {
                assert_eq!(shape.len(), 2, "column split of a {}-D tensor", shape.len());
                assert_eq!(shape[1] % world, 0, "cols of {shape:?} split {world} ways");
                let (row_bytes, part_bytes) = (shape[1] * elem, shape[1] / world * elem);
                data.chunks_exact(row_bytes)
                    .flat_map(|row| &row[rank * part_bytes..(rank + 1) * part_bytes])
                    .copied()
                    .collect()
            }
        };
        HostTensor { dtype, shape: shard.shape(shape), data }
    }
}

/// A provider of named weight tensors.
pub trait WeightSource: Send + Sync {
    /// The part `shard` of tensor `name`, whose full shape must be `full_shape`. `dtype` is the
    /// dtype wanted when the source can choose (dummy weights); files keep their stored dtype.
    fn get(&self, name: &str, full_shape: &[usize], shard: Shard, dtype: DType) -> Result<HostTensor>;

    /// Whether the source has a tensor of this name (for optional tensors such as `lm_head`).
    fn contains(&self, name: &str) -> bool;

    /// The generator, when this source makes up its values: the loader then lets the backend
    /// generate them where they will live (`Backend::upload_dummy`).
    fn dummy(&self) -> Option<&DummySource> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_rows_and_columns() {
        let t = HostTensor::from_f32(vec![2, 4], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        assert_eq!(t.clone().slice(Shard::Rows { rank: 1, world: 2 }).to_f32(), vec![4., 5., 6., 7.]);
        let cols = t.slice(Shard::Cols { rank: 1, world: 2 });
        assert_eq!(cols.shape, vec![2, 2]);
        assert_eq!(cols.to_f32(), vec![2., 3., 6., 7.]);
    }
}
