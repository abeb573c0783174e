//! Device tensors of the CUDA backend. Everything the model touches is bf16; only the RoPE tables
//! stay f32 (they are read once per token and their precision sets the rotation's).

use cudarc::driver::CudaSlice;
use half::bf16;
use tessera_model::KvCacheShape;

/// `rows x cols` bf16 values, row-major. Weights are tensors too (vectors have one row).
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<bf16>,
}

impl CudaTensor {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cos and sin, f32 `[max_positions, head_dim / 2]`.
pub struct CudaRope {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub max_positions: usize,
    pub head_dim: usize,
}

/// Per layer, K and V of bf16 `[num_blocks, block_size, num_kv_heads, head_dim]`.
pub struct CudaKvCache {
    pub shape: KvCacheShape,
    pub layers: Vec<(CudaSlice<bf16>, CudaSlice<bf16>)>,
}

impl CudaKvCache {
    pub fn num_slots(&self) -> usize {
        self.shape.num_blocks * self.shape.block_size
    }
}
