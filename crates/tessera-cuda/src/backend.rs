//! `CudaBackend`: the model's operations on one GPU, in bf16 with f32 accumulation.

use crate::batch::{encode, CudaBatch};
use crate::device::{backend_err, Device, MemoryStats};
use crate::launch::{self, Heads, ATTN_MIN_PART};
use crate::nccl::{CommConfig, NcclComm};
use crate::tensor::{CudaKvCache, CudaRope, CudaTensor};
use cudarc::driver::CudaSlice;
use half::bf16;
use tessera_model::weights::{DummyFill, HostTensor};
use tessera_model::{Backend, DType, KvCacheShape, ModelError, ModelInput, QkvLayout, Result, TpRank};

pub struct CudaBackend {
    pub(crate) device: Device,
    ordinal: usize,
    /// The rank's tensor-parallel communicator; `None` on a single GPU.
    pub(crate) comm: Option<NcclComm>,
}

/// Steps where some sequence computes at least this many tokens run attention on tensor cores,
/// tile by tile (`prefill_attention`); pure decode steps keep `paged_attention`, whose split along
/// the context fills the GPU when there are few rows.
const PREFILL_MIN_QUERY_LEN: usize = 8;

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
        Ok(CudaBackend { device: Device::new(ordinal)?, ordinal, comm: None })
    }

    /// A backend on GPU `ordinal` that is rank `config.rank` of a tensor-parallel group: creates
    /// the NCCL communicator (bounded by `config.init_timeout`), so every rank of the group must
    /// call this at about the same time.
    pub fn new_in_group(ordinal: usize, config: &CommConfig) -> Result<Self> {
        let mut backend = Self::new(ordinal)?;
        backend.comm = Some(NcclComm::from_rank(backend.device.stream.clone(), config)?);
        Ok(backend)
    }

    /// This backend's place in its tensor-parallel group (`TpRank::SINGLE` on a single GPU), as
    /// `Model::load` takes it.
    pub fn tp_rank(&self) -> TpRank {
        self.comm.as_ref().map_or(TpRank::SINGLE, |c| TpRank { rank: c.rank(), world: c.world() })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn device_name(&self) -> String {
        self.device.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// The GPU's compute capability, (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.device.arch
    }

    // The device's own synchronisations below find the stream idle: `synchronize` has waited,
    // within the collective deadline when there is a group.
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.synchronize()?;
        self.device.memory_stats()
    }

    pub fn reset_peak_memory(&self) -> Result<()> {
        self.synchronize()?;
        self.device.reset_peak()
    }

    pub fn trim_memory_pool(&self) -> Result<()> {
        self.synchronize()?;
        self.device.trim_pool()
    }

    /// In a group, returns once every rank has called it too, waiting at most `timeout` (for
    /// points where peers may lag by more than the collective deadline, such as after loading
    /// weights); on one GPU it returns at once.
    pub fn wait_for_group(&self, timeout: std::time::Duration) -> Result<()> {
        match &self.comm {
            Some(comm) => comm.barrier(timeout, "waiting for the other ranks to load"),
            None => Ok(()),
        }
    }

    /// Waits for everything enqueued so far. In a group it polls against
    /// `parallel.collective_timeout_ms` instead of blocking in the driver, which would wait
    /// forever behind a collective whose peer never comes.
    pub fn synchronize(&self) -> Result<()> {
        match &self.comm {
            Some(comm) => comm.wait_idle("waiting for the GPU's work"),
            None => self.device.stream.synchronize().map_err(backend_err("synchronize")),
        }
    }

    /// Copies host values (rounded to bf16) into a new device tensor.
    pub fn tensor_from_host(&self, rows: usize, cols: usize, values: &[f32]) -> Result<CudaTensor> {
        assert_eq!(values.len(), rows * cols);
        let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let data = self.device.stream.clone_htod(&host).map_err(backend_err("copy to device"))?;
        Ok(CudaTensor { rows, cols, data })
    }

    /// Copies bf16 host values into a new device tensor (no conversion: for large inputs).
    pub fn tensor_from_bf16(&self, rows: usize, cols: usize, values: &[bf16]) -> Result<CudaTensor> {
        assert_eq!(values.len(), rows * cols);
        let data = self.device.stream.clone_htod(values).map_err(backend_err("copy to device"))?;
        Ok(CudaTensor { rows, cols, data })
    }

    pub(crate) fn alloc(&self, len: usize) -> Result<CudaSlice<bf16>> {
        // SAFETY: every caller hands the buffer to a kernel or GEMM that writes all of it.
        unsafe { self.device.stream.alloc::<bf16>(len.max(1)) }.map_err(backend_err("alloc"))
    }

    fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: partial attention results, written before they are read.
        unsafe { self.device.stream.alloc::<f32>(len.max(1)) }.map_err(backend_err("alloc"))
    }

    /// A tensor of rows x cols (its buffer holds one element when that is zero).
    pub(crate) fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { rows, cols, data: self.alloc(rows * cols)? })
    }

    /// Buffers for the partial results of `rows` rows split `max_splits` ways along the context
    /// (one element each when nothing is split).
    fn attention_partials(
        &self,
        rows: usize,
        layout: QkvLayout,
        max_splits: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let partials = if max_splits > 1 { rows * layout.num_heads * max_splits } else { 0 };
        Ok((self.alloc_f32(partials * layout.head_dim)?, self.alloc_f32(partials * 2)?))
    }

    /// Partitions per row in the attention kernels' grid: a row is split along its context only when
    /// rows x KV heads alone would leave the multiprocessors idle (small decode batches with long
    /// contexts), into at most as many partitions as `max_kv_len` holds of the shortest size
    /// (`ATTN_MIN_PART` keys). The kernels size the partitions from the batch's longest context on
    /// the device (common.cuh's `partition_size`), so for a graph's batch, whose `max_kv_len` is a
    /// capacity bound, a short context is split as an eager step of as many rows would split it.
    fn max_splits(&self, rows: usize, num_kv_heads: usize, max_kv_len: usize) -> usize {
        let blocks = rows * num_kv_heads;
        let target = 2 * self.device.num_sms as usize;
        if blocks >= target {
            return 1;
        }
        target.div_ceil(blocks.max(1)).min(max_kv_len.div_ceil(ATTN_MIN_PART)).max(1)
    }
}

fn backend(message: String) -> ModelError {
    ModelError::Backend(message)
}

fn check_rope(rope: &CudaRope, batch: &CudaBatch, layout: QkvLayout) -> Result<()> {
    assert_eq!(rope.head_dim, layout.head_dim, "RoPE table of another head size");
    if batch.num_tokens() > 0 && batch.bounds.max_position >= rope.max_positions {
        return Err(backend(format!(
            "position {} beyond the RoPE table of {} positions",
            batch.bounds.max_position, rope.max_positions
        )));
    }
    Ok(())
}

fn check_slots(cache: &CudaKvCache, batch: &CudaBatch) {
    assert_eq!(batch.block_size, cache.shape.block_size, "batch and cache block sizes differ");
    assert!(batch.num_tokens() == 0 || batch.bounds.max_slot < cache.num_slots(), "slot beyond the cache");
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

    fn upload_dummy(&self, parts: &[DummyFill], dtype: DType) -> Result<Option<CudaTensor>> {
        // `upload` rounds f32 and bf16 host values once to bf16, as fill_dummy does; f16 values
        // would be rounded twice, so those come from the host.
        if dtype == DType::F16 || parts.is_empty() {
            return Ok(None);
        }
        let width = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == width && p.vector == parts[0].vector), "fused parts differ");
        let len: usize = parts.iter().map(DummyFill::numel).sum();
        let mut data = self.alloc(len)?;
        let mut offset = 0;
        for part in parts {
            let mut view = data.slice_mut(offset..offset + part.numel());
            launch::fill_dummy(&self.device, &mut view, part)?;
            offset += part.numel();
        }
        // 1-D tensors (norm weights, biases) are one row, as `upload` holds them.
        let (rows, cols) = if parts[0].vector { (1, len) } else { (len / width, width) };
        Ok(Some(CudaTensor { rows, cols, data }))
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
        let mut out = crate::gemm::linear(self, x, weight)?;
        if let Some(bias) = bias {
            launch::add_bias(&self.device, &mut out.data, &bias.data, out.rows, out.cols)?;
        }
        Ok(out)
    }

    fn linear_into_residual(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        residual: &mut CudaTensor,
    ) -> Result<Option<CudaTensor>> {
        if crate::gemm::linear_accumulate(self, x, weight, residual)? {
            Ok(None)
        } else {
            self.linear(x, weight, None).map(Some)
        }
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
        check_rope(rope, batch, layout)?;
        let positions = batch.view(&batch.layout.positions);
        launch::rope(&self.device, &mut qkv.data, &positions, &rope.cos, &rope.sin, heads(layout))
    }

    fn rope_write_kv(
        &self,
        qkv: &mut CudaTensor,
        rope: &CudaRope,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        layout: QkvLayout,
    ) -> Result<()> {
        check_rope(rope, batch, layout)?;
        check_slots(cache, batch);
        let positions = batch.view(&batch.layout.positions);
        let slots = batch.view(&batch.layout.slot_mapping);
        let (k, v) = &mut cache.layers[layer];
        let (cos, sin) = (&rope.cos, &rope.sin);
        launch::rope_write_kv(&self.device, &mut qkv.data, k, v, &positions, &slots, cos, sin, heads(layout))
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        qkv: &CudaTensor,
        batch: &CudaBatch,
        layout: QkvLayout,
    ) -> Result<()> {
        check_slots(cache, batch);
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
        let (k, v) = &cache.layers[layer];
        let h = heads(layout);
        let mut out = self.tensor(rows, layout.q_width())?;
        let decode_fast = launch::decode_attention_supports(h);
        if batch.bounds.max_query_len >= PREFILL_MIN_QUERY_LEN
            && launch::prefill_attention_supports(h, self.device.shared_optin)
        {
            // Prompt chunks on tensor cores; the step's decode rows, if any, at memory speed.
            let (tiles, decode_rows) = match decode_fast {
                true => (batch.multi_row_tiles(), batch.num_decode_rows()),
                false => (batch.all_tiles(), 0),
            };
            let meta = batch.attention_meta(1);
            launch::prefill_attention(&self.device, &mut out.data, &qkv.data, k, v, &meta, &tiles, h)?;
            if decode_rows > 0 {
                let max_splits = self.max_splits(decode_rows, layout.num_kv_heads, batch.bounds.max_kv_len);
                let (mut part_o, mut part_ml) = self.attention_partials(rows, layout, max_splits)?;
                let meta = batch.decode_rows_meta(max_splits);
                let (o, pm) = (&mut part_o, &mut part_ml);
                launch::decode_attention(&self.device, &mut out.data, o, pm, &qkv.data, k, v, &meta, h)?;
            }
            return Ok(out);
        }
        let max_splits = self.max_splits(rows, layout.num_kv_heads, batch.bounds.max_kv_len);
        let (mut part_o, mut part_ml) = self.attention_partials(rows, layout, max_splits)?;
        let meta = batch.attention_meta(max_splits);
        let (o, pm) = (&mut part_o, &mut part_ml);
        match decode_fast {
            true => launch::decode_attention(&self.device, &mut out.data, o, pm, &qkv.data, k, v, &meta, h)?,
            false => launch::paged_attention(&self.device, &mut out.data, o, pm, &qkv.data, k, v, &meta, h)?,
        }
        Ok(out)
    }

    fn linear_silu_mul(&self, x: &CudaTensor, gate_up: &CudaTensor) -> Result<CudaTensor> {
        assert_eq!(
            x.cols, gate_up.cols,
            "linear_silu_mul: x has {} features, the weight {}",
            x.cols, gate_up.cols
        );
        if crate::gemm::glu_gemm_applies(&self.device, x, gate_up) {
            return self.gemm_glu(x, gate_up);
        }
        if !crate::gemm::glu_applies(&self.device, x, gate_up) {
            return self.silu_mul(&self.linear(x, gate_up, None)?);
        }
        let mut out = self.tensor(x.rows, gate_up.rows / 2)?;
        launch::gemv_glu(&self.device, &mut out.data, &x.data, &gate_up.data, x.rows, out.cols, x.cols)?;
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

    fn every_row_wants_logits(&self, batch: &CudaBatch) -> bool {
        batch.layout.every_row_wants_logits()
    }

    fn all_reduce(&self, x: &mut CudaTensor) -> Result<()> {
        self.all_reduce_sum(x)
    }

    fn all_gather_cols(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.gather_cols(x)
    }

    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        if self.comm.is_some() {
            // The copy would block in the driver until the stream gets there; wait boundedly first.
            self.synchronize()?;
        }
        let host = self.device.stream.clone_dtoh(&x.data).map_err(backend_err("copy to host"))?;
        Ok(host[..x.len()].iter().map(|v| v.to_f32()).collect())
    }

    fn end_step(&self) -> Result<()> {
        self.synchronize()
    }
}
