//! `CudaBackend`: the model's operations on one GPU, in bf16 with f32 accumulation.

use crate::batch::{encode, CudaBatch};
use crate::device::{backend_err, Device, MemoryStats};
use crate::launch::{self, AttentionMeta, Heads, ATTN_CHUNK};
use crate::tensor::{CudaKvCache, CudaRope, CudaTensor};
use cudarc::driver::CudaSlice;
use half::bf16;
use tessera_model::weights::HostTensor;
use tessera_model::{Backend, DType, KvCacheShape, ModelError, ModelInput, QkvLayout, Result};

pub struct CudaBackend {
    pub(crate) device: Device,
    ordinal: usize,
}

fn heads(layout: QkvLayout) -> Heads {
    Heads {
        num_heads: layout.num_heads as u32,
        num_kv_heads: layout.num_kv_heads as u32,
        head_dim: layout.head_dim as u32,
        row_width: layout.row_width() as u32,
    }
}

fn to_bf16(tensor: &HostTensor) -> Vec<bf16> {
    match tensor.dtype {
        DType::Bf16 => tensor.data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect(),
        DType::F32 | DType::F16 => tensor.to_f32().into_iter().map(bf16::from_f32).collect(),
    }
}

impl CudaBackend {
    /// A backend on GPU `ordinal`: creates its context and stream and loads every kernel.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend { device: Device::new(ordinal)?, ordinal })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn device_name(&self) -> String {
        self.device.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.device.memory_stats()
    }

    pub fn reset_peak_memory(&self) -> Result<()> {
        self.device.reset_peak()
    }

    pub fn trim_memory_pool(&self) -> Result<()> {
        self.device.trim_pool()
    }

    pub fn synchronize(&self) -> Result<()> {
        self.device.stream.synchronize().map_err(backend_err("synchronize"))
    }

    /// Copies host values (rounded to bf16) into a new device tensor.
    pub fn tensor_from_host(&self, rows: usize, cols: usize, values: &[f32]) -> Result<CudaTensor> {
        assert_eq!(values.len(), rows * cols);
        let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let data = self.device.stream.clone_htod(&host).map_err(backend_err("copy to device"))?;
        Ok(CudaTensor { rows, cols, data })
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<bf16>> {
        // SAFETY: every caller hands the buffer to a kernel or GEMM that writes all of it.
        unsafe { self.device.stream.alloc::<bf16>(len.max(1)) }.map_err(backend_err("alloc"))
    }

    fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: partial attention results, written before they are read.
        unsafe { self.device.stream.alloc::<f32>(len.max(1)) }.map_err(backend_err("alloc"))
    }

    /// A tensor of rows x cols (its buffer holds one element when that is zero).
    fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { rows, cols, data: self.alloc(rows * cols)? })
    }

    /// Keys per partition: a row is split along its context only when rows x KV heads alone
    /// would leave the GPU's multiprocessors idle (small decode batches with long contexts).
    fn part_size(&self, rows: usize, num_kv_heads: usize, max_kv_len: usize) -> usize {
        let blocks = rows * num_kv_heads;
        let target = 2 * self.device.num_sms as usize;
        let whole = max_kv_len.div_ceil(ATTN_CHUNK).max(1) * ATTN_CHUNK;
        if blocks >= target {
            return whole;
        }
        let splits = target.div_ceil(blocks.max(1));
        (max_kv_len.div_ceil(splits).div_ceil(ATTN_CHUNK).max(1) * ATTN_CHUNK).min(whole)
    }
}

fn backend(message: String) -> ModelError {
    ModelError::Backend(message)
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaTensor;
    type Batch = CudaBatch;
    type KvCache = CudaKvCache;
    type Rope = CudaRope;

    fn upload(&self, tensor: HostTensor) -> Result<CudaTensor> {
        let (rows, cols) = match tensor.shape[..] {
            [n] => (1, n),
            [rows, cols] => (rows, cols),
            ref other => return Err(backend(format!("cannot hold a weight of shape {other:?}"))),
        };
        let host = to_bf16(&tensor);
        let data = self.device.stream.clone_htod(&host).map_err(backend_err("weight upload"))?;
        Ok(CudaTensor { rows, cols, data })
    }

    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, head_dim: usize) -> Result<CudaRope> {
        assert_eq!(cos.len(), sin.len(), "rope tables of different lengths");
        let max_positions = cos.len() / (head_dim / 2);
        let stream = &self.device.stream;
        Ok(CudaRope {
            cos: stream.clone_htod(&cos).map_err(backend_err("rope upload"))?,
            sin: stream.clone_htod(&sin).map_err(backend_err("rope upload"))?,
            max_positions,
            head_dim,
        })
    }

    fn alloc_kv_cache(&self, shape: KvCacheShape) -> Result<CudaKvCache> {
        let len = shape.num_blocks * shape.block_size * shape.num_kv_heads * shape.head_dim;
        let stream = &self.device.stream;
        let layers = (0..shape.num_layers)
            .map(|_| {
                let k = stream.alloc_zeros::<bf16>(len).map_err(backend_err("KV cache alloc"))?;
                let v = stream.alloc_zeros::<bf16>(len).map_err(backend_err("KV cache alloc"))?;
                Ok((k, v))
            })
            .collect::<Result<_>>()?;
        Ok(CudaKvCache { shape, layers })
    }

    fn prepare(&self, input: &ModelInput) -> Result<CudaBatch> {
        let encoded = encode(input, input.num_tokens());
        let meta = self.device.stream.clone_htod(&encoded.meta).map_err(backend_err("batch upload"))?;
        Ok(CudaBatch { meta, layout: encoded.layout, bounds: encoded.bounds, block_size: input.block_size })
    }

    fn embedding(&self, table: &CudaTensor, vocab_start: usize, batch: &CudaBatch) -> Result<CudaTensor> {
        let mut out = self.tensor(batch.num_tokens(), table.cols)?;
        let tokens = batch.view(&batch.layout.token_ids);
        let (start, rows, cols) = (vocab_start as u32, table.rows as u32, table.cols as u32);
        launch::embedding(&self.device, &mut out.data, &table.data, &tokens, start, rows, cols)?;
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        let mut out = self.tensor(x.rows, x.cols)?;
        launch::rms_norm(&self.device, &mut out.data, &x.data, &weight.data, eps, x.rows, x.cols)?;
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor> {
        assert_eq!((residual.rows, residual.cols), (delta.rows, delta.cols), "residual add shapes");
        let mut out = self.tensor(residual.rows, residual.cols)?;
        let (rows, cols) = (residual.rows, residual.cols);
        launch::add_rms_norm(
            &self.device,
            &mut out.data,
            &mut residual.data,
            &delta.data,
            &weight.data,
            eps,
            rows,
            cols,
        )?;
        Ok(out)
    }

    fn linear(&self, x: &CudaTensor, weight: &CudaTensor, bias: Option<&CudaTensor>) -> Result<CudaTensor> {
        let mut out = crate::gemm::linear(&self.device, x, weight)?;
        if let Some(bias) = bias {
            launch::add_bias(&self.device, &mut out.data, &bias.data, out.rows, out.cols)?;
        }
        Ok(out)
    }

    fn qk_norm(
        &self,
        qkv: &mut CudaTensor,
        q_weight: &CudaTensor,
        k_weight: &CudaTensor,
        eps: f32,
        layout: QkvLayout,
    ) -> Result<()> {
        let rows = qkv.rows;
        launch::qk_norm(&self.device, &mut qkv.data, &q_weight.data, &k_weight.data, eps, heads(layout), rows)
    }

    fn rope(
        &self,
        qkv: &mut CudaTensor,
        rope: &CudaRope,
        batch: &CudaBatch,
        layout: QkvLayout,
    ) -> Result<()> {
        assert_eq!(rope.head_dim, layout.head_dim, "RoPE table of another head size");
        if batch.num_tokens() > 0 && batch.bounds.max_position >= rope.max_positions {
            return Err(backend(format!(
                "position {} beyond the RoPE table of {} positions",
                batch.bounds.max_position, rope.max_positions
            )));
        }
        let positions = batch.view(&batch.layout.positions);
        launch::rope(&self.device, &mut qkv.data, &positions, &rope.cos, &rope.sin, heads(layout))
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        qkv: &CudaTensor,
        batch: &CudaBatch,
        layout: QkvLayout,
    ) -> Result<()> {
        assert_eq!(batch.block_size, cache.shape.block_size, "batch and cache block sizes differ");
        assert!(
            batch.num_tokens() == 0 || batch.bounds.max_slot < cache.num_slots(),
            "slot beyond the cache"
        );
        let slots = batch.view(&batch.layout.slot_mapping);
        let (k, v) = &mut cache.layers[layer];
        launch::write_kv(&self.device, k, v, &qkv.data, &slots, heads(layout))
    }

    fn attention(
        &self,
        cache: &CudaKvCache,
        layer: usize,
        qkv: &CudaTensor,
        batch: &CudaBatch,
        layout: QkvLayout,
    ) -> Result<CudaTensor> {
        assert!(
            batch.num_tokens() == 0 || batch.bounds.max_block < cache.shape.num_blocks,
            "block beyond the cache"
        );
        let rows = qkv.rows;
        let part_size = self.part_size(rows, layout.num_kv_heads, batch.bounds.max_kv_len);
        let max_splits = batch.bounds.max_kv_len.div_ceil(part_size).max(1);
        let partials = if max_splits > 1 { rows * layout.num_heads * max_splits } else { 0 };
        let mut part_o = self.alloc_f32(partials * layout.head_dim)?;
        let mut part_ml = self.alloc_f32(partials * 2)?;
        let mut out = self.tensor(rows, layout.q_width())?;
        let meta = AttentionMeta {
            block_tables: batch.view(&batch.layout.block_tables),
            row_table_start: batch.view(&batch.layout.row_table_start),
            row_kv_len: batch.view(&batch.layout.row_kv_len),
            block_size: batch.block_size as u32,
            part_size: part_size as u32,
            max_splits: max_splits as u32,
        };
        let (k, v) = &cache.layers[layer];
        launch::paged_attention(
            &self.device,
            &mut out.data,
            &mut part_o,
            &mut part_ml,
            &qkv.data,
            k,
            v,
            &meta,
            heads(layout),
        )?;
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        assert_eq!(gate_up.cols % 2, 0, "silu_mul needs a fused gate|up tensor");
        let n = gate_up.cols / 2;
        let mut out = self.tensor(gate_up.rows, n)?;
        launch::silu_mul(&self.device, &mut out.data, &gate_up.data, gate_up.rows, n)?;
        Ok(out)
    }

    fn gather_logit_rows(&self, x: &CudaTensor, batch: &CudaBatch) -> Result<CudaTensor> {
        let indices = batch.view(&batch.layout.logits_indices);
        let mut out = self.tensor(indices.len(), x.cols)?;
        launch::gather_rows(&self.device, &mut out.data, &x.data, &indices, x.cols)?;
        Ok(out)
    }

    fn all_reduce(&self, _x: &mut CudaTensor) -> Result<()> {
        // A single-GPU backend: the sum over a group of one is the tensor itself.
        Ok(())
    }

    fn all_gather_cols(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let data = self.device.stream.clone_dtod(&x.data).map_err(backend_err("copy"))?;
        Ok(CudaTensor { rows: x.rows, cols: x.cols, data })
    }

    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        let host = self.device.stream.clone_dtoh(&x.data).map_err(backend_err("copy to host"))?;
        Ok(host[..x.len()].iter().map(|v| v.to_f32()).collect())
    }
}
