//! The operations the model definition is written against. A backend owns its device, tensor
//! type and paged KV cache; the model only says which operations run in which order.
//!
//! Activations are 2-D, one row per token of the flattened batch. Attention works on the fused
//! q|k|v projection output of a row, whose head layout `QkvLayout` describes.

use crate::error::Result;
use crate::input::ModelInput;
use crate::spec::DType;
use crate::weights::{DummyFill, HostTensor};

/// Head layout of a fused q|k|v row on this tensor-parallel rank: `num_heads` query heads, then
/// `num_kv_heads` key heads, then as many value heads, each `head_dim` wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvLayout {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl QkvLayout {
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn row_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
}

/// Shape of the paged KV cache on one rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    /// Bytes of K and V for one block across all layers, at `elem_bytes` per element.
    pub fn bytes_per_block(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem_bytes
    }
}

pub trait Backend {
    /// Activations, `[rows, cols]`.
    type Tensor;
    /// A weight (matrix `[out, in]`, or vector) in the backend's storage.
    type Weight: Send + Sync;
    /// A step's `ModelInput`, staged on the device.
    type Batch;
    type KvCache;
    /// Precomputed RoPE cos/sin for every position.
    type Rope: Send + Sync;

    fn upload(&self, tensor: HostTensor) -> Result<Self::Weight>;
    /// `cos` and `sin` are `[max_positions, head_dim / 2]`, row-major.
    /// Dummy weights generated on the device: the row-wise concatenation of `parts` (each part's
    /// rows, in order; all of one width), as `upload` of the host values of `dtype` would store
    /// them, bit for bit. `None` (the default) when the backend cannot, and the loader uploads
    /// host values instead.
    fn upload_dummy(&self, parts: &[DummyFill], dtype: DType) -> Result<Option<Self::Weight>> {
        let _ = (parts, dtype);
        Ok(None)
    }
    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, head_dim: usize) -> Result<Self::Rope>;
    fn alloc_kv_cache(&self, shape: KvCacheShape) -> Result<Self::KvCache>;
    fn prepare(&self, input: &ModelInput) -> Result<Self::Batch>;

    /// Rows of `table` for the batch's tokens; `table` holds vocab rows from `vocab_start` on, and
    /// tokens outside it get zero rows (the all-reduce of a vocab-parallel embedding fills them).
    fn embedding(
        &self,
        table: &Self::Weight,
        vocab_start: usize,
        batch: &Self::Batch,
    ) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Result<Self::Tensor>;
    /// `residual += delta`, then returns `rms_norm(residual)`: the fused pre-norm of each block.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// `x @ weight^T (+ bias)`.
    fn linear(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
    ) -> Result<Self::Tensor>;
    /// `residual += x @ weight^T` where the backend adds inside the product (a GEMM's `C +=`),
    /// which spares the add its own pass over the rows: returns `None` then. Elsewhere it returns
    /// the product and leaves `residual` alone; the caller adds it (`add_rms_norm` fuses that add
    /// with the next norm). The default never adds. Only for a product that is final as it is:
    /// a tensor-parallel rank's partial product must be all-reduced before it is added.
    fn linear_into_residual(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        residual: &mut Self::Tensor,
    ) -> Result<Option<Self::Tensor>> {
        let _ = residual;
        self.linear(x, weight, None).map(Some)
    }
    /// Per-head RMSNorm of the q and k heads of a fused q|k|v tensor, in place (Qwen3).
    fn qk_norm(
        &self,
        qkv: &mut Self::Tensor,
        q_weight: &Self::Weight,
        k_weight: &Self::Weight,
        eps: f32,
        layout: QkvLayout,
    ) -> Result<()>;
    /// Rotates the q and k heads of a fused q|k|v tensor by each token's position, in place.
    fn rope(
        &self,
        qkv: &mut Self::Tensor,
        rope: &Self::Rope,
        batch: &Self::Batch,
        layout: QkvLayout,
    ) -> Result<()>;
    /// Stores the k and v heads of each token at its slot in layer `layer` of the cache.
    fn write_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        qkv: &Self::Tensor,
        batch: &Self::Batch,
        layout: QkvLayout,
    ) -> Result<()>;
    /// `rope`, then `write_kv` of the rotated k and the v heads: one pass a backend may fuse (one
    /// kernel instead of two per layer on a GPU).
    fn rope_write_kv(
        &self,
        qkv: &mut Self::Tensor,
        rope: &Self::Rope,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::Batch,
        layout: QkvLayout,
    ) -> Result<()> {
        self.rope(qkv, rope, batch, layout)?;
        self.write_kv(cache, layer, qkv, batch, layout)
    }
    /// Causal attention of each token's q heads over its sequence's cached K/V (which must already
    /// include this step's tokens); returns `[rows, num_heads * head_dim]`.
    fn attention(
        &self,
        cache: &Self::KvCache,
        layer: usize,
        qkv: &Self::Tensor,
        batch: &Self::Batch,
        layout: QkvLayout,
    ) -> Result<Self::Tensor>;
    /// `silu(gate) * up` for a fused `[rows, 2 * n]` gate|up tensor.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// The MLP's first half: `silu_mul(linear(x, gate_up))` for a fused gate|up weight (gate rows,
    /// then up rows): one pass a backend may fuse (the activation in the GEMV's epilogue on a GPU).
    fn linear_silu_mul(&self, x: &Self::Tensor, gate_up: &Self::Weight) -> Result<Self::Tensor> {
        self.silu_mul(&self.linear(x, gate_up, None)?)
    }
    /// The rows at the batch's `logits_indices`.
    fn gather_logit_rows(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor>;
    /// Whether every row of the batch (padding included) is a logits row, in order, so that
    /// `gather_logit_rows` would return its input unchanged (a decode batch).
    fn every_row_wants_logits(&self, batch: &Self::Batch) -> bool;
    /// Sums `x` over the tensor-parallel group, in place.
    fn all_reduce(&self, x: &mut Self::Tensor) -> Result<()>;
    /// Concatenates each rank's columns of `x`, rank order (vocab-parallel logits).
    fn all_gather_cols(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Copies a tensor to host memory, row-major.
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;
    /// Returns once the step's device work, collectives included, has finished, or fails if it
    /// cannot: a backend with a collective deadline never waits past it. Workers call it at the
    /// end of every step, so a rank's reply means its step is done.
    fn end_step(&self) -> Result<()> {
        Ok(())
    }
}
