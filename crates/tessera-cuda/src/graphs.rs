//! CUDA graphs for decode steps: the whole forward of a batch in which every sequence computes one
//! token, captured once per batch size at startup and replayed with one launch, instead of some
//! 350 kernel launches and allocations per step.
//!
//! What a graph bakes in, and how each is kept valid:
//! - Device addresses: weights, the KV cache, one static metadata buffer (`meta`) and one static
//!   logits buffer shared by every graph, and the graph's own activations (graph memory nodes,
//!   whose addresses are fixed for the graph's life). Before a replay the batch's metadata is
//!   copied into `meta`, laid out for the captured size (`batch.rs`: every array but the block
//!   tables is `rows` long, the tables go last and may be any length up to the capacity).
//! - Launch shapes: the row count, so a batch is padded up to the next captured size (padding
//!   rows write no KV and read none); attention's grid, with room for the partitions of a context
//!   of `max_model_len` (the kernels size the partitions from each replay's longest context, which
//!   is in `meta`, so a short context is not split coarser than an eager step would split it).
//!
//! Everything else a step varies (tokens, positions, slots, block tables, context lengths) is data
//! in `meta`. Prefill and mixed steps run eagerly; so do decode batches larger than the largest
//! captured size.
//!
//! Chained replays: the metadata is copied from pinned staging (`staging.rs`), so a replay is
//! only queued, never waited for. `queue_argmax` chooses the greedy tokens of the last replay on
//! the device and queues their copy to the host; `replay_chained` queues the next decode step of
//! those rows (or of some of them) behind it, its tokens copied on the device from those greedy
//! choices. The host reads a step's tokens (`take_tokens`) while the next step already runs.
//!
//! Invariant: the model and KV cache a `DecodeGraphs` was captured with stay alive and unmoved on
//! the device while it replays (the engine's `ModelRunner` owns all three together).
//! Invariant: a replayed batch passes the same checks as an eager one (`eligible`); anything
//! else runs eagerly, where those checks raise their errors.

use crate::backend::CudaBackend;
use crate::batch::{encode, Bounds, CudaBatch, Layout};
use crate::device::backend_err;
use crate::launch;
use crate::staging::{PinnedRing, Queued};
use crate::tensor::{CudaKvCache, CudaTensor};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};
use std::collections::VecDeque;
use std::time::Instant;
use tessera_model::{Model, ModelError, ModelInput, Result};

/// `u32` entries of the metadata of `rows` decode rows with up to `table_width` blocks each: the
/// batch's longest context, six per-row arrays (tokens, positions, slots, logits indices, table
/// offsets, KV lengths), the tables, then one one-row tile per row (first row and row count;
/// `batch.rs`). The tiles are not read by a decode graph, but a replay uploads them too.
fn meta_capacity(rows: usize, table_width: usize) -> usize {
    1 + rows * (6 + table_width + 2)
}

/// What one capture measured.
#[derive(Clone, Debug)]
pub struct GraphReport {
    pub batch_sizes: Vec<usize>,
    pub capture_ms: f64,
    /// Device memory of the graphs' activations (the driver's graph pool), bytes.
    pub graph_pool_bytes: usize,
    /// The static metadata and logits buffers, bytes.
    pub static_bytes: usize,
}

pub struct DecodeGraphs {
    /// Ascending by batch size.
    graphs: Vec<(usize, CudaGraph)>,
    meta: CudaSlice<u32>,
    /// `[largest size, vocab]`; after a replay of `n` rows, rows `0..n` are that batch's logits.
    logits: CudaTensor,
    /// Host staging of `meta`'s uploads.
    staging: PinnedRing,
    /// The greedy tokens of the last `queue_argmax`, one per row: a chained replay's tokens.
    tokens: CudaSlice<u32>,
    /// How many rows of `tokens` the last `queue_argmax` chose (0 before the first).
    token_rows: usize,
    /// Host copies of `tokens`, oldest first: at most two queued (a step and the one after it).
    token_copies: PinnedRing,
    queued: VecDeque<Queued>,
    block_size: usize,
    max_model_len: usize,
    num_blocks: usize,
    report: GraphReport,
}

// SAFETY: CUDA graph objects are not internally synchronised, so they must not be used from two
// threads at once, but any one thread may use them (cudarc binds the context on each call).
// `CudaGraph` is `!Send` only because it holds raw handles. A `DecodeGraphs` is used through
// `&mut self` (replay) or `&self` (reads of its buffers, no graph calls), and is not `Sync`, so its
// graphs are only ever used by the one thread that owns it: the worker thread it moves to.
unsafe impl Send for DecodeGraphs {}

/// `rows` (ascending) as runs of consecutive values: (first index into `rows`, first value,
/// length).
fn runs(rows: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &row) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some((_, from, len)) if *from + *len == row => *len += 1,
            _ => runs.push((i, row, 1)),
        }
    }
    runs
}

/// A batch of `rows` padding rows over the static `meta` buffer, laid out as a replay of that
/// size will be, whose attention is split for contexts up to `max_model_len`.
fn capture_batch(meta: CudaSlice<u32>, rows: usize, block_size: usize, max_model_len: usize) -> CudaBatch {
    let table_width = max_model_len.div_ceil(block_size);
    let mut layout: Layout = encode(&ModelInput { block_size, ..Default::default() }, rows).layout;
    layout.block_tables = layout.block_tables.start..layout.block_tables.start + rows * table_width;
    assert!(layout.block_tables.end <= meta.len(), "graph metadata buffer too small");
    let bounds = Bounds { max_kv_len: max_model_len, max_query_len: 1, ..Bounds::default() };
    CudaBatch { meta, layout, bounds, block_size }
}

/// Uploads the all-padding metadata of `rows` rows into the front of `meta`.
fn upload_padding(
    backend: &CudaBackend,
    meta: &mut CudaSlice<u32>,
    rows: usize,
    block_size: usize,
) -> Result<()> {
    let encoded = encode(&ModelInput { block_size, ..Default::default() }, rows);
    let mut front = meta.slice_mut(0..encoded.meta.len());
    backend.device.stream.memcpy_htod(&encoded.meta, &mut front).map_err(backend_err("graph metadata upload"))
}

/// Peak bytes of the stream-ordered pool during one eager decode forward of `rows` padding rows,
/// shaped like a graph's (attention split for `max_model_len`): what a graph of that size holds
/// as activations. Profiling uses it to set memory aside for the graphs.
pub fn decode_activation_peak(
    backend: &CudaBackend,
    model: &Model<CudaBackend>,
    cache: &mut CudaKvCache,
    rows: usize,
) -> Result<usize> {
    let (block_size, max_model_len) = (cache.shape.block_size, model.max_model_len());
    let capacity = meta_capacity(rows, max_model_len.div_ceil(block_size));
    let mut meta = backend.device.stream.alloc_zeros::<u32>(capacity).map_err(backend_err("alloc"))?;
    upload_padding(backend, &mut meta, rows, block_size)?;
    let batch = capture_batch(meta, rows, block_size, max_model_len);
    backend.reset_peak_memory()?;
    let base = backend.memory_stats()?.pool_used;
    drop(model.forward(backend, &batch, cache)?);
    Ok(backend.memory_stats()?.pool_used_peak.saturating_sub(base))
}

/// Bytes of the buffers `DecodeGraphs` keeps besides its graphs, for graphs up to `rows` rows.
pub fn static_bytes(rows: usize, vocab: usize, max_model_len: usize, block_size: usize) -> usize {
    meta_capacity(rows, max_model_len.div_ceil(block_size)) * 4 + rows * vocab * 2
}

impl DecodeGraphs {
    /// Captures one graph per size in `sizes` (ascending, distinct, non-empty) for `model` over
    /// `cache`. Each size first runs once eagerly (lazy initialisation, e.g. of cuBLAS kernels,
    /// must not happen inside a capture; its GEMM shapes are tuned there), then is captured,
    /// largest first.
    pub fn capture(
        backend: &CudaBackend,
        model: &Model<CudaBackend>,
        cache: &mut CudaKvCache,
        sizes: &[usize],
    ) -> Result<Self> {
        assert!(!sizes.is_empty() && sizes.windows(2).all(|w| w[0] < w[1]), "graph sizes {sizes:?}");
        let start = Instant::now();
        let stream = backend.device.stream.clone();
        let (block_size, max_model_len) = (cache.shape.block_size, model.max_model_len());
        let largest = *sizes.last().expect("non-empty");
        let vocab = model.spec().vocab_size;
        let capacity = meta_capacity(largest, max_model_len.div_ceil(block_size));
        let mut meta = stream.alloc_zeros::<u32>(capacity).map_err(backend_err("alloc"))?;
        let mut logits = CudaTensor {
            rows: largest,
            cols: vocab,
            data: stream.alloc_zeros(largest * vocab).map_err(backend_err("alloc"))?,
        };
        let mut graphs = Vec::with_capacity(sizes.len());
        for &rows in sizes.iter().rev() {
            upload_padding(backend, &mut meta, rows, block_size)?;
            let batch = capture_batch(meta, rows, block_size, max_model_len);
            // The eager run also tunes the GEMMs of this batch size (gemm_tune.rs): the capture
            // then records the algorithms chosen.
            let tuner = &backend.device.gemm_tuner;
            drop(tuner.while_tuning(|| model.forward(backend, &batch, cache))?);
            backend.synchronize()?;
            let graph = capture_one(backend, model, cache, &batch, &mut logits).map_err(|e| {
                ModelError::Backend(format!("capturing the decode graph of {rows} rows: {e}"))
            })?;
            graph.upload().map_err(backend_err("graph upload"))?;
            graphs.push((rows, graph));
            meta = batch.into_meta();
        }
        graphs.reverse();
        backend.synchronize()?;
        let ctx = &backend.device.ctx;
        let staging = PinnedRing::new(ctx, capacity, true).map_err(backend_err("pinned staging"))?;
        let token_copies = PinnedRing::new(ctx, largest, false).map_err(backend_err("pinned staging"))?;
        let tokens = stream.alloc_zeros::<u32>(largest).map_err(backend_err("alloc"))?;
        let report = GraphReport {
            batch_sizes: sizes.to_vec(),
            capture_ms: start.elapsed().as_secs_f64() * 1e3,
            graph_pool_bytes: backend.device.graph_memory()?,
            static_bytes: static_bytes(largest, vocab, max_model_len, block_size),
        };
        Ok(DecodeGraphs {
            graphs,
            meta,
            logits,
            staging,
            tokens,
            token_rows: 0,
            token_copies,
            queued: VecDeque::new(),
            block_size,
            max_model_len,
            num_blocks: cache.shape.num_blocks,
            report,
        })
    }

    pub fn report(&self) -> &GraphReport {
        &self.report
    }

    /// The shared logits buffer, `[largest size, vocab]`: after a replay of `n` rows, rows `0..n`
    /// hold that batch's logits.
    pub fn logits(&self) -> &CudaTensor {
        &self.logits
    }

    /// The captured batch sizes, ascending.
    pub fn batch_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.graphs.iter().map(|(size, _)| *size)
    }

    /// The captured size a batch of `rows` rows is padded to, if any.
    pub fn padded_size(&self, rows: usize) -> Option<usize> {
        self.graphs.iter().map(|(size, _)| *size).find(|&size| size >= rows)
    }

    /// Whether `input` is a decode batch a graph can run: every sequence computes one token and
    /// wants its logits, within the captured sizes, and its positions, slots and blocks are in
    /// range (else the eager path reports them).
    fn eligible(&self, input: &ModelInput) -> bool {
        let n = input.num_tokens();
        n > 0
            && input.block_size == self.block_size
            && input.seqs.len() == n
            && input.seqs.iter().all(|s| s.query_len == 1 && s.context_len <= self.max_model_len)
            && input.every_row_wants_logits()
            && self.padded_size(n).is_some()
    }

    /// Runs `input` from the graph of the next captured size up and returns the logits, whose
    /// first `input.num_tokens()` rows are the batch's; `None` when it must run eagerly.
    pub fn replay(&mut self, backend: &CudaBackend, input: &ModelInput) -> Result<Option<&CudaTensor>> {
        Ok(self.launch(backend, input, None)?.then_some(&self.logits))
    }

    /// Queues `input` behind the work already on the stream, as `replay` does, except that row
    /// `i`'s token is the greedy choice of row `rows[i]` of the last `queue_argmax`, copied on the
    /// device (`input`'s token ids are not read; `rows` ascend, one per row of `input`). False
    /// when it must run eagerly; then nothing was queued.
    pub fn replay_chained(
        &mut self,
        backend: &CudaBackend,
        input: &ModelInput,
        rows: &[usize],
    ) -> Result<bool> {
        assert_eq!(rows.len(), input.num_tokens(), "one source row per chained row");
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "source rows ascend");
        assert!(rows.last().is_none_or(|&r| r < self.token_rows), "a source row past the last argmax's");
        self.launch(backend, input, Some(rows))
    }

    fn launch(
        &mut self,
        backend: &CudaBackend,
        input: &ModelInput,
        chained: Option<&[usize]>,
    ) -> Result<bool> {
        if !self.eligible(input) {
            return Ok(false);
        }
        let n = input.num_tokens();
        let size = self.padded_size(n).expect("eligible");
        let encoded = encode(input, size);
        let b = encoded.bounds;
        let in_range = b.max_position < self.max_model_len
            && b.max_slot < self.num_blocks * self.block_size
            && b.max_block < self.num_blocks
            && encoded.meta.len() <= self.meta.len();
        if !in_range {
            return Ok(false);
        }
        let stream = &backend.device.stream;
        let mut front = self.meta.slice_mut(0..encoded.meta.len());
        self.staging
            .upload(stream, &encoded.meta, &mut front)
            .map_err(backend_err("graph metadata upload"))?;
        if let Some(rows) = chained {
            // One copy per run of consecutive source rows: one when no sequence ended, a few
            // when some did.
            let start = encoded.layout.token_ids.start;
            for (to, from, len) in runs(rows) {
                let mut token_ids = self.meta.slice_mut(start + to..start + to + len);
                stream
                    .memcpy_dtod(&self.tokens.slice(from..from + len), &mut token_ids)
                    .map_err(backend_err("chained tokens copy"))?;
            }
        }
        let (_, graph) = self.graphs.iter().find(|(s, _)| *s == size).expect("captured");
        graph.launch().map_err(backend_err("graph launch"))?;
        Ok(true)
    }

    /// Chooses the greedy token of rows `0..rows` of the last replay's logits on the device (the
    /// host sampler's `argmax`) and queues their copy to the host, read by `take_tokens`. At most
    /// two are queued at once.
    pub fn queue_argmax(&mut self, backend: &CudaBackend, rows: usize) -> Result<()> {
        assert!(self.queued.len() < 2, "two steps' tokens are already queued");
        assert!(rows > 0 && rows <= self.logits.rows, "argmax of {rows} rows");
        let device = &backend.device;
        launch::argmax_rows(
            device,
            &mut self.tokens.slice_mut(0..rows),
            &self.logits.data,
            self.logits.cols,
        )?;
        let queued = self
            .token_copies
            .download(&device.stream, &self.tokens.slice(0..rows))
            .map_err(backend_err("copy to host"))?;
        self.token_rows = rows;
        self.queued.push_back(queued);
        Ok(())
    }

    /// The tokens of the oldest queued `queue_argmax`, once its step is done.
    pub fn take_tokens(&mut self) -> Result<Vec<u32>> {
        let queued = self.queued.pop_front().expect("take_tokens with nothing queued");
        self.token_copies.read(queued).map_err(backend_err("copy to host"))
    }

    /// Forgets the oldest queued tokens (a chained step whose plan did not come): its work still
    /// runs, and nothing reads it.
    pub fn discard_tokens(&mut self) {
        self.queued.pop_front().expect("discard_tokens with nothing queued");
    }
}

/// Captures one forward of `batch` plus the copy of its logits into the shared buffer. The
/// forward's temporaries become the graph's own allocations, freed within it.
fn capture_one(
    backend: &CudaBackend,
    model: &Model<CudaBackend>,
    cache: &mut CudaKvCache,
    batch: &CudaBatch,
    logits: &mut CudaTensor,
) -> Result<CudaGraph> {
    let stream = &backend.device.stream;
    // Thread-local: other workers' threads (tensor-parallel ranks) may go on with their own work.
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(backend_err("begin capture"))?;
    let captured = (|| {
        let out = model.forward(backend, batch, cache)?;
        let len = out.rows * out.cols;
        assert_eq!((out.rows, out.cols), (batch.num_tokens(), logits.cols), "decode logits shape");
        let mut front = logits.data.slice_mut(0..len);
        stream.memcpy_dtod(&out.data.slice(0..len), &mut front).map_err(backend_err("logits copy"))
    })();
    // The capture must end whatever happened, or the stream stays unusable.
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    captured?;
    ended.map_err(backend_err("end capture"))?.ok_or_else(|| ModelError::Backend("empty graph".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::SeqChunk;

    #[test]
    fn chained_rows_copy_as_runs_of_consecutive_rows() {
        assert_eq!(runs(&[0, 1, 2, 3]), [(0, 0, 4)], "no sequence ended: one copy");
        assert_eq!(runs(&[2, 3, 4, 6, 9, 10]), [(0, 2, 3), (3, 6, 1), (4, 9, 2)]);
        assert!(runs(&[]).is_empty());
    }

    /// A replay whose every sequence uses the whole model length must fit the static buffer (a
    /// capacity without the tiles made such a replay fall back to eager).
    #[test]
    fn the_metadata_of_full_length_decode_rows_fits_the_capacity() {
        let (block_size, max_model_len, rows): (usize, usize, usize) = (16, 1040, 3);
        let table: Vec<u32> = (0..max_model_len.div_ceil(block_size) as u32).collect();
        let tokens = [1u32];
        let chunks: Vec<SeqChunk<'_>> = (0..rows)
            .map(|_| SeqChunk {
                new_tokens: &tokens,
                num_computed_tokens: max_model_len - 1,
                block_table: &table,
                wants_logits: true,
            })
            .collect();
        let encoded = encode(&ModelInput::build(block_size, &chunks), rows);
        let capacity = meta_capacity(rows, max_model_len.div_ceil(block_size));
        assert_eq!(encoded.meta.len(), capacity, "the capacity is exactly the worst case");
    }
}
