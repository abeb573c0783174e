//! One typed launcher per kernel of `kernels/`: each checks the shapes it relies on, picks the
//! grid, and holds the only `unsafe` of its launch. Kernel arguments must match the `.cu`
//! signatures exactly (order and width), which is what these functions pin down.

use crate::device::Device;
use builder::KernelLaunch;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig};
use half::bf16;
use tessera_model::weights::DummyFill;
use tessera_model::Result;

mod attention;
mod builder;
mod gemm_glu;
mod gemv;
pub use attention::*;
pub use gemm_glu::*;
pub use gemv::*;

/// Threads of a per-row block: enough to stride a row in few passes, at most 1024.
fn row_threads(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 1024) as u32
}

fn cfg(grid: (u32, u32, u32), threads: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (threads, 1, 1), shared_mem_bytes }
}

/// Grid-stride element-wise launches: enough blocks to fill the GPU, no more.
fn elementwise(device: &Device, total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(256).clamp(1, device.num_sms as usize * 8) as u32;
    cfg((blocks, 1, 1), 256, 0)
}

/// Most bytes of dynamic shared memory a launch may ask for without an opt-in attribute.
const SHARED_LIMIT: usize = 48 * 1024;

/// Whether `buf` starts on a 16-byte boundary, as kernels with 16-byte vector loads need (pool
/// allocations always do; checked rather than assumed).
pub fn aligned16<T>(device: &Device, buf: &CudaSlice<T>) -> bool {
    buf.device_ptr(&device.stream).0.is_multiple_of(16)
}

/// 16-byte vectors of a row that one thread of `rms_norm_v8` / `add_rms_norm_v8` keeps in
/// registers (norm.cu's NORM_VECS).
const NORM_VECS: usize = 4;

/// The vectorized norm kernels take rows of whole 16-byte vectors, at most NORM_VECS per thread
/// of a 1024-thread block; the block has as many threads as the row needs.
fn norm_v8_threads(device: &Device, cols: usize, bufs: &[&CudaSlice<bf16>]) -> Option<u32> {
    let vecs = cols / 8;
    let fits = cols.is_multiple_of(8) && vecs > 0 && vecs <= NORM_VECS * 1024;
    (fits && bufs.iter().all(|b| aligned16(device, b))).then(|| row_threads(vecs.div_ceil(NORM_VECS)))
}

pub fn embedding(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    table: &CudaSlice<bf16>,
    tokens: &CudaView<'_, u32>,
    vocab_start: u32,
    vocab_rows: u32,
    hidden: u32,
) -> Result<()> {
    let rows = tokens.len();
    assert!(out.len() >= rows * hidden as usize && table.len() == vocab_rows as usize * hidden as usize);
    if rows == 0 {
        return Ok(());
    }
    let mut b = KernelLaunch::new(device, "embedding");
    b.arg(out).arg(table).arg(tokens).arg(&vocab_start).arg(&vocab_rows).arg(&hidden);
    // SAFETY: the table holds vocab_rows x hidden values, out rows x hidden, tokens rows.
    unsafe { b.launch(cfg((rows as u32, 1, 1), row_threads(hidden as usize), 0)) }
}

/// Generates one part of a dummy weight into `out` (embedding.cu's `fill_dummy`).
pub fn fill_dummy(device: &Device, out: &mut CudaViewMut<'_, bf16>, fill: &DummyFill) -> Result<()> {
    assert_eq!(out.len(), fill.numel(), "fill_dummy: buffer of another size");
    if fill.numel() == 0 {
        return Ok(());
    }
    let [n, cols, row0, col0, full_cols] =
        [fill.numel(), fill.cols, fill.row0, fill.col0, fill.full_cols].map(|v| v as u64);
    let mut b = KernelLaunch::new(device, "fill_dummy");
    b.arg(out).arg(&n).arg(&fill.base).arg(&fill.center).arg(&fill.half_width);
    b.arg(&cols).arg(&row0).arg(&col0).arg(&full_cols);
    // SAFETY: writes exactly the `n` elements of `out`.
    unsafe { b.launch(elementwise(device, fill.numel())) }
}

pub fn rms_norm(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    eps: f32,
    rows: usize,
    cols: usize,
) -> Result<()> {
    // First: a tensor of no rows still holds one element (`CudaBackend::alloc`).
    if rows == 0 {
        return Ok(());
    }
    assert!(x.len() == rows * cols && out.len() == rows * cols && w.len() == cols, "rms_norm shapes");
    let cols32 = cols as u32;
    let (name, launch) = match norm_v8_threads(device, cols, &[out, x, w]) {
        Some(threads) => ("rms_norm_v8", cfg((rows as u32, 1, 1), threads, 0)),
        None => {
            assert!(cols * 4 <= SHARED_LIMIT, "rms_norm rows of {cols} exceed shared memory");
            ("rms_norm", cfg((rows as u32, 1, 1), row_threads(cols), (cols * 4) as u32))
        }
    };
    let mut b = KernelLaunch::new(device, name);
    b.arg(out).arg(x).arg(w).arg(&eps).arg(&cols32);
    // SAFETY: x and out are rows x cols, w is cols; the scalar kernel's row fits the shared
    // memory asked for, the vector kernel's block covers the row (`norm_v8_threads`).
    unsafe { b.launch(launch) }
}

#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    residual: &mut CudaSlice<bf16>,
    delta: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    eps: f32,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    assert!(residual.len() == rows * cols && delta.len() == rows * cols, "add_rms_norm shapes");
    assert!(out.len() == rows * cols && w.len() == cols, "add_rms_norm shapes");
    let cols32 = cols as u32;
    let (name, launch) = match norm_v8_threads(device, cols, &[out, residual, delta, w]) {
        Some(threads) => ("add_rms_norm_v8", cfg((rows as u32, 1, 1), threads, 0)),
        None => {
            assert!(cols * 4 <= SHARED_LIMIT, "add_rms_norm rows of {cols} exceed shared memory");
            ("add_rms_norm", cfg((rows as u32, 1, 1), row_threads(cols), (cols * 4) as u32))
        }
    };
    let mut b = KernelLaunch::new(device, name);
    b.arg(out).arg(residual).arg(delta).arg(w).arg(&eps).arg(&cols32);
    // SAFETY: as rms_norm; residual is updated in place by the block that owns its row.
    unsafe { b.launch(launch) }
}

/// Heads of `head_dim` in fused rows of `row_width`: q heads, then k heads, then v heads.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub row_width: u32,
}

impl Heads {
    pub fn check(&self, len: usize, rows: usize) {
        let width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim;
        assert_eq!(width, self.row_width, "q|k|v rows of {} for heads {self:?}", self.row_width);
        assert_eq!(len, rows * self.row_width as usize, "q|k|v tensor of {len} values for {rows} rows");
    }
}

pub fn qk_norm(
    device: &Device,
    qkv: &mut CudaSlice<bf16>,
    q_w: &CudaSlice<bf16>,
    k_w: &CudaSlice<bf16>,
    eps: f32,
    heads: Heads,
    rows: usize,
) -> Result<()> {
    heads.check(qkv.len(), rows);
    assert!(q_w.len() == heads.head_dim as usize && k_w.len() == heads.head_dim as usize);
    if rows == 0 {
        return Ok(());
    }
    let warps = 8u32;
    let norm_heads = heads.num_heads + heads.num_kv_heads;
    let mut b = KernelLaunch::new(device, "qk_norm");
    b.arg(qkv).arg(q_w).arg(k_w).arg(&eps).arg(&heads.num_heads).arg(&heads.num_kv_heads);
    b.arg(&heads.head_dim).arg(&heads.row_width);
    // SAFETY: one warp per q/k head of each row; the kernel bounds-checks the head index.
    unsafe { b.launch(cfg((rows as u32, norm_heads.div_ceil(warps), 1), warps * 32, 0)) }
}

pub fn rope(
    device: &Device,
    qkv: &mut CudaSlice<bf16>,
    positions: &CudaView<'_, u32>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    heads: Heads,
) -> Result<()> {
    let rows = positions.len();
    heads.check(qkv.len(), rows);
    assert_eq!(cos.len(), sin.len());
    if rows == 0 {
        return Ok(());
    }
    let rot_heads = heads.num_heads + heads.num_kv_heads;
    let mut b = KernelLaunch::new(device, "rope");
    b.arg(qkv).arg(positions).arg(cos).arg(sin).arg(&rot_heads).arg(&heads.head_dim).arg(&heads.row_width);
    // SAFETY: positions were checked against the table length on the host (`prepare`).
    unsafe { b.launch(cfg((rows as u32, 1, 1), row_threads((rot_heads * heads.head_dim / 2) as usize), 0)) }
}

/// `rope` and `write_kv` in one launch (rope.cu's `rope_write_kv`).
#[allow(clippy::too_many_arguments)]
pub fn rope_write_kv(
    device: &Device,
    qkv: &mut CudaSlice<bf16>,
    k_cache: &mut CudaSlice<bf16>,
    v_cache: &mut CudaSlice<bf16>,
    positions: &CudaView<'_, u32>,
    slots: &CudaView<'_, u32>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    heads: Heads,
) -> Result<()> {
    let rows = positions.len();
    heads.check(qkv.len(), rows);
    assert_eq!(slots.len(), rows, "rope_write_kv: a slot per row");
    assert_eq!(cos.len(), sin.len());
    assert_eq!(k_cache.len(), v_cache.len());
    if rows == 0 {
        return Ok(());
    }
    let rot_pairs = (heads.num_heads + heads.num_kv_heads) * heads.head_dim / 2;
    // Four pairs a thread for VECTOR_ROPE_MIN_ROWS rows or more, where whole 16-byte vectors
    // allow it (`TESSERA_ROPE=scalar`, read at each launch, keeps one pair a thread, to compare).
    let scalar = std::env::var_os("TESSERA_ROPE").is_some_and(|v| v == "scalar");
    let vector = !scalar
        && rows >= VECTOR_ROPE_MIN_ROWS
        && heads.head_dim.is_multiple_of(8)
        && aligned16(device, qkv)
        && aligned16(device, k_cache)
        && aligned16(device, v_cache)
        && aligned16(device, cos)
        && aligned16(device, sin);
    let (name, per_thread) = if vector { ("rope_write_kv_v4", 4) } else { ("rope_write_kv", 1) };
    let mut b = KernelLaunch::new(device, name);
    b.arg(qkv).arg(k_cache).arg(v_cache).arg(positions).arg(slots).arg(cos).arg(sin);
    b.arg(&heads.num_heads).arg(&heads.num_kv_heads).arg(&heads.head_dim).arg(&heads.row_width);
    // One pair (or four) per thread: rows x blocks of ROPE_THREADS.
    let per_row = rot_pairs.div_ceil(per_thread * ROPE_THREADS);
    // SAFETY: positions were checked against the table length and slots against the cache on the
    // host (`prepare`, `rope_write_kv`); padding slots are skipped by the kernel.
    unsafe { b.launch(cfg((rows as u32, per_row, 1), ROPE_THREADS, 0)) }
}

/// Rows from which `rope_write_kv` runs four pairs a thread. op_bench, H100 (8B layout): 8,184
/// rows (a prefill step) 86 us against 139 us for one pair a thread (84% against 52% of the copy
/// bandwidth), but one row (a decode step) 2.34 against 1.92 us: few rows are latency-bound,
/// and one pair a thread spreads them over more threads.
const VECTOR_ROPE_MIN_ROWS: usize = 64;

/// Threads per block of `rope_write_kv`.
const ROPE_THREADS: u32 = 256;

/// Threads per block of `silu_mul_v8`, one 16-byte vector each.
const SILU_THREADS: u32 = 256;
/// The most blocks a grid's y dimension takes.
const MAX_GRID_Y: usize = 65535;

pub fn silu_mul(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    gate_up: &CudaSlice<bf16>,
    rows: usize,
    n: usize,
) -> Result<()> {
    if rows * n == 0 {
        return Ok(());
    }
    assert!(gate_up.len() == rows * 2 * n && out.len() == rows * n, "silu_mul shapes");
    let (rows32, n32) = (rows as u32, n as u32);
    let vector = n.is_multiple_of(8) && aligned16(device, out) && aligned16(device, gate_up);
    let (name, launch) = if vector {
        let blocks = (n / 8).div_ceil(SILU_THREADS as usize) as u32;
        ("silu_mul_v8", cfg((blocks, rows.min(MAX_GRID_Y) as u32, 1), SILU_THREADS, 0))
    } else {
        ("silu_mul", elementwise(device, rows * n))
    };
    let mut b = KernelLaunch::new(device, name);
    b.arg(out).arg(gate_up).arg(&rows32).arg(&n32);
    // SAFETY: the scalar kernel's grid-stride loop is bounded by rows * n; the vector kernel's
    // threads stop at the row's n / 8 vectors and its rows loop below `rows`; its 16-byte
    // accesses are aligned (n % 8 == 0 and both buffers start 16-byte aligned).
    unsafe { b.launch(launch) }
}

pub fn add_bias(
    device: &Device,
    x: &mut CudaSlice<bf16>,
    bias: &CudaSlice<bf16>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows * cols == 0 {
        return Ok(());
    }
    assert!(x.len() == rows * cols && bias.len() == cols, "add_bias shapes");
    let (rows32, cols32) = (rows as u32, cols as u32);
    let mut b = KernelLaunch::new(device, "add_bias");
    b.arg(x).arg(bias).arg(&rows32).arg(&cols32);
    // SAFETY: grid-stride loop bounded by rows * cols.
    unsafe { b.launch(elementwise(device, rows * cols)) }
}

pub fn gather_rows(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    indices: &CudaView<'_, u32>,
    cols: usize,
) -> Result<()> {
    let n = indices.len();
    if n == 0 {
        return Ok(());
    }
    assert!(out.len() == n * cols && x.len().is_multiple_of(cols), "gather_rows shapes");
    let cols32 = cols as u32;
    let mut b = KernelLaunch::new(device, "gather_rows");
    b.arg(out).arg(x).arg(indices).arg(&cols32);
    // SAFETY: indices were checked against the row count on the host (`prepare`).
    unsafe { b.launch(cfg((n as u32, 1, 1), row_threads(cols), 0)) }
}

/// `out[r, p * cols + c] = parts[p, r, c]` for `num_parts` blocks of `rows x cols`.
pub fn concat_cols(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    parts: &CudaSlice<bf16>,
    num_parts: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let total = num_parts * rows * cols;
    if total == 0 {
        return Ok(());
    }
    assert!(out.len() >= total && parts.len() >= total, "concat_cols shapes");
    let (n, r, c) = (num_parts as u32, rows as u32, cols as u32);
    let mut b = KernelLaunch::new(device, "concat_cols");
    b.arg(out).arg(parts).arg(&n).arg(&r).arg(&c);
    // SAFETY: both buffers hold at least num_parts x rows x cols values.
    unsafe { b.launch(elementwise(device, total)) }
}

pub fn write_kv(
    device: &Device,
    k_cache: &mut CudaSlice<bf16>,
    v_cache: &mut CudaSlice<bf16>,
    qkv: &CudaSlice<bf16>,
    slot_mapping: &CudaView<'_, u32>,
    heads: Heads,
) -> Result<()> {
    let rows = slot_mapping.len();
    heads.check(qkv.len(), rows);
    let kv_width = heads.num_kv_heads * heads.head_dim;
    assert_eq!(k_cache.len() % kv_width as usize, 0, "cache of whole slots");
    if rows == 0 {
        return Ok(());
    }
    let q_width = heads.num_heads * heads.head_dim;
    let mut b = KernelLaunch::new(device, "write_kv");
    b.arg(k_cache).arg(v_cache).arg(qkv).arg(slot_mapping).arg(&q_width).arg(&kv_width).arg(&heads.row_width);
    // SAFETY: slots were checked against the cache's slot count on the host (`prepare`/`write_kv`).
    unsafe { b.launch(cfg((rows as u32, 1, 1), row_threads(kv_width as usize), 0)) }
}

/// Threads of `argmax_rows` (sampling.cu's ARGMAX_THREADS).
const ARGMAX_THREADS: u32 = 1024;

/// `out[r]` = the greedy choice of row `r` of `logits` (`rows x cols`), for the first `out.len()`
/// rows.
pub fn argmax_rows(
    device: &Device,
    out: &mut CudaViewMut<'_, u32>,
    logits: &CudaSlice<bf16>,
    cols: usize,
) -> Result<()> {
    let rows = out.len();
    assert!(cols > 0 && logits.len() >= rows * cols, "argmax_rows over {rows} rows of {cols}");
    if rows == 0 {
        return Ok(());
    }
    let cols32 = cols as u32;
    let mut b = KernelLaunch::new(device, "argmax_rows");
    b.arg(out).arg(logits).arg(&cols32);
    // SAFETY: one block per row, each reading its own `cols` values of `logits`.
    unsafe { b.launch(cfg((rows as u32, 1, 1), ARGMAX_THREADS, 0)) }
}

/// Threads of `penalize_rows` and `sample_rows` (sampling.cu's SAMPLE_THREADS).
const SAMPLE_THREADS: u32 = 1024;
/// f32 parameters per row of `penalize_rows` and `sample_rows` (sampling.cu's FP_COUNT).
pub const SAMPLE_FPARAMS: usize = 6;

/// Per-row inputs of the sampling kernels, on the device.
pub struct SampleArgs<'a> {
    /// `[rows, SAMPLE_FPARAMS]`: temperature, top_p, min_p, repetition, frequency, presence.
    pub fparams: &'a CudaSlice<f32>,
    pub top_ks: &'a CudaSlice<u32>,
    pub uniforms: &'a CudaSlice<f64>,
    /// CSR of each row's distinct prompt and output tokens with their output counts.
    pub pen_offsets: &'a CudaSlice<u32>,
    pub pen_tokens: &'a CudaSlice<u32>,
    pub pen_counts: &'a CudaSlice<u32>,
}

/// `out[r]` = the token sampled from row `r` of `logits` (`rows x vocab`, rows = `out.len()`),
/// through the f32 scratch `work` (`rows x vocab`), which gets the penalised logits.
pub fn sample_rows(
    device: &Device,
    out: &mut CudaSlice<u32>,
    work: &mut CudaSlice<f32>,
    logits: &CudaSlice<bf16>,
    vocab: usize,
    args: &SampleArgs<'_>,
) -> Result<()> {
    let rows = out.len();
    assert!(vocab > 0 && logits.len() >= rows * vocab && work.len() >= rows * vocab, "sample_rows shapes");
    assert!(args.fparams.len() >= rows * SAMPLE_FPARAMS && args.top_ks.len() >= rows);
    assert!(args.uniforms.len() >= rows && args.pen_offsets.len() > rows, "sample_rows parameters");
    if rows == 0 {
        return Ok(());
    }
    let vocab32 = vocab as u32;
    let grid = cfg((rows as u32, 1, 1), SAMPLE_THREADS, 0);
    let mut b = KernelLaunch::new(device, "penalize_rows");
    b.arg(work).arg(logits).arg(&vocab32).arg(args.fparams).arg(args.pen_offsets);
    b.arg(args.pen_tokens).arg(args.pen_counts);
    // SAFETY: one block per row over its own `vocab` values; the CSR offsets index the token and
    // count lists (built by `CudaBackend::sample_rows`), tokens outside the vocabulary are skipped.
    unsafe { b.launch(grid) }?;
    let mut b = KernelLaunch::new(device, "sample_rows");
    b.arg(out).arg(&*work).arg(&vocab32).arg(args.fparams).arg(args.top_ks).arg(args.uniforms);
    // SAFETY: one block per row over its own `vocab` values of `work`, written above.
    unsafe { b.launch(grid) }
}
