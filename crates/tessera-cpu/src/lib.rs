//! The CPU backend: f32 compute over bf16/f16/f32 weights (converted once at load), a paged KV
//! cache read through block tables, and collectives for tensor parallelism across threads.
//!
//! It is the reference: every other backend is tested against it.

mod attention;
pub mod collective;
mod gemm;
pub mod local_group;
mod ops;
pub mod tcp_group;
pub mod tensor;

pub use attention::CpuKvCache;
pub use collective::{Collective, SingleRank};
pub use local_group::{LocalComm, LocalGroup};
pub use tcp_group::{tcp_connect, TcpComm, TcpHub, TcpPoison};
pub use tensor::CpuTensor;

use std::sync::Arc;
use tessera_model::weights::HostTensor;
use tessera_model::{Backend, KvCacheShape, ModelError, ModelInput, QkvLayout, Result};

/// Cos and sin tables, `[max_positions, head_dim / 2]`.
pub struct CpuRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

pub struct CpuBackend {
    comm: Arc<dyn Collective>,
}

impl CpuBackend {
    /// A backend for a single rank (no tensor parallelism).
    pub fn new() -> Self {
        CpuBackend { comm: Arc::new(SingleRank) }
    }

    /// A backend for one rank of a tensor-parallel group.
    pub fn with_collective(comm: Arc<dyn Collective>) -> Self {
        CpuBackend { comm }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn collective_error(message: String) -> ModelError {
    ModelError::Backend(format!("collective failed: {message}"))
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuTensor;
    type Batch = ModelInput;
    type KvCache = CpuKvCache;
    type Rope = CpuRope;

    fn upload(&self, tensor: HostTensor) -> Result<CpuTensor> {
        let (rows, cols) = match tensor.shape[..] {
            [n] => (1, n),
            [rows, cols] => (rows, cols),
            ref other => return Err(ModelError::Backend(format!("cannot hold a weight of shape {other:?}"))),
        };
        Ok(CpuTensor::new(rows, cols, tensor.to_f32()))
    }

    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, _head_dim: usize) -> Result<CpuRope> {
        Ok(CpuRope { cos, sin })
    }

    fn alloc_kv_cache(&self, shape: KvCacheShape) -> Result<CpuKvCache> {
        Ok(CpuKvCache::new(shape))
    }

    fn prepare(&self, input: &ModelInput) -> Result<ModelInput> {
        Ok(input.clone())
    }

    fn embedding(&self, table: &CpuTensor, vocab_start: usize, batch: &ModelInput) -> Result<CpuTensor> {
        Ok(ops::embedding(table, vocab_start, &batch.token_ids))
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        Ok(ops::rms_norm(x, &weight.data, eps))
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor> {
        ops::add_in_place(residual, delta);
        Ok(ops::rms_norm(residual, &weight.data, eps))
    }

    fn linear(&self, x: &CpuTensor, weight: &CpuTensor, bias: Option<&CpuTensor>) -> Result<CpuTensor> {
        Ok(gemm::linear(x, weight, bias))
    }

    /// Always adds (in f32, as `add_rms_norm` would), so the CPU runs the model's fused path.
    fn linear_into_residual(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        residual: &mut CpuTensor,
    ) -> Result<Option<CpuTensor>> {
        ops::add_in_place(residual, &gemm::linear(x, weight, None));
        Ok(None)
    }

    fn qk_norm(
        &self,
        qkv: &mut CpuTensor,
        q: &CpuTensor,
        k: &CpuTensor,
        eps: f32,
        layout: QkvLayout,
    ) -> Result<()> {
        ops::qk_norm(qkv, &q.data, &k.data, eps, layout);
        Ok(())
    }

    fn rope(&self, qkv: &mut CpuTensor, rope: &CpuRope, batch: &ModelInput, layout: QkvLayout) -> Result<()> {
        ops::rope(qkv, &batch.positions, &rope.cos, &rope.sin, layout);
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        qkv: &CpuTensor,
        batch: &ModelInput,
        layout: QkvLayout,
    ) -> Result<()> {
        cache.write(layer, qkv, &batch.slot_mapping, layout);
        Ok(())
    }

    fn attention(
        &self,
        cache: &CpuKvCache,
        layer: usize,
        qkv: &CpuTensor,
        batch: &ModelInput,
        layout: QkvLayout,
    ) -> Result<CpuTensor> {
        Ok(cache.attention(layer, qkv, batch, layout))
    }

    fn silu_mul(&self, gate_up: &CpuTensor) -> Result<CpuTensor> {
        Ok(ops::silu_mul(gate_up))
    }

    fn gather_logit_rows(&self, x: &CpuTensor, batch: &ModelInput) -> Result<CpuTensor> {
        let data = batch.logits_indices.iter().flat_map(|&i| x.row(i).iter().copied()).collect();
        Ok(CpuTensor::new(batch.logits_indices.len(), x.cols, data))
    }

    fn every_row_wants_logits(&self, batch: &ModelInput) -> bool {
        batch.every_row_wants_logits()
    }

    fn all_reduce(&self, x: &mut CpuTensor) -> Result<()> {
        if self.comm.world() > 1 {
            self.comm.all_reduce_sum(&mut x.data).map_err(collective_error)?;
        }
        Ok(())
    }

    fn all_gather_cols(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let parts = self.comm.all_gather(&x.data).map_err(collective_error)?;
        let cols = x.cols * parts.len();
        let mut out = CpuTensor::zeros(x.rows, cols);
        for (rank, part) in parts.iter().enumerate() {
            for r in 0..x.rows {
                out.row_mut(r)[rank * x.cols..(rank + 1) * x.cols]
                    .copy_from_slice(&part[r * x.cols..(r + 1) * x.cols]);
            }
        }
        Ok(out)
    }

    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }
}
