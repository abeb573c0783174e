//! Launchers of the GEMV kernels (gemv.cu) for decode-sized batches.

use super::{aligned16, cfg, Heads, KernelLaunch};
use crate::device::Device;
use cudarc::driver::{CudaSlice, CudaView};
use half::bf16;
use tessera_model::Result;

/// Weight rows per block and threads per block of the GEMV kernels (gemv.cu's GEMV_ROWS and
/// GEMV_WARPS * 32).
const GEMV_ROWS: usize = 16;
const GEMV_THREADS: u32 = 256;
/// Most rows of x the GEMV kernels take: `gemv_m8` up to 8, `gemv_m16` up to 16.
pub const GEMV_KERNEL_MAX_M: usize = 16;

/// Whether the GEMV kernels handle `out[m, n] = x[m, k] @ w[n, k]^T` on these buffers: 1..=16
/// rows, rows of whole 16-byte vectors (k % 8 == 0) on 16-byte aligned buffers, and sizes that
/// fit the kernels' 32-bit indices.
pub fn gemv_supports(
    device: &Device,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    (1..=GEMV_KERNEL_MAX_M).contains(&m)
        && n > 0
        && k > 0
        && k.is_multiple_of(8)
        && n <= (u32::MAX as usize - GEMV_ROWS)
        && k <= u32::MAX as usize / 2
        && aligned16(device, x)
        && aligned16(device, w)
}

/// Weights of at most this many rows run in blocks of 8 rows (gemv.cu's `gemv_m8_r8`): twice the
/// blocks for the short projections (q|k|v and o of an 8B model), whose 16-row blocks left the
/// GPU half busy.
const GEMV_R8_MAX_N: usize = 8192;

/// Weight rows per block of the m <= 8 GEMV for a weight of `n` rows. `TESSERA_GEMV_ROWS=8|16`
/// forces one, to measure them against each other (op_bench, decode_bench).
fn gemv_block_rows(n: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("TESSERA_GEMV_ROWS").ok().and_then(|v| v.parse().ok()).filter(|r| [8, 16].contains(r))
    });
    forced.unwrap_or(if n <= GEMV_R8_MAX_N { 8 } else { GEMV_ROWS })
}

/// `out[m, n] = x[m, k] @ w[n, k]^T` by the GEMV kernels (one block per 8 or 16 weight rows);
/// the caller checked `gemv_supports`.
pub fn gemv(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    assert!(gemv_supports(device, x, w, m, n, k), "gemv of {m}x{k} @ {n}x{k}^T");
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n, "gemv buffers");
    let rows = if m <= 8 { gemv_block_rows(n) } else { GEMV_ROWS };
    let name = match (m <= 8, rows) {
        (true, 8) => "gemv_m8_r8",
        (true, _) => "gemv_m8",
        _ => "gemv_m16",
    };
    launch_gemv(device, name, out, x, w, [m, n, k], n.div_ceil(rows))
}

/// `out[m, n] = silu(x @ w[..n]^T) * (x @ w[n..]^T)` for a fused gate|up weight `w` of 2n rows
/// (gemv.cu's `gemv_glu_m8`): the MLP's gate|up projection and activation in one kernel, for
/// m <= 8; the caller checked `gemv_supports` on the whole weight.
pub fn gemv_glu(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    assert!(m <= 8 && gemv_supports(device, x, w, m, 2 * n, k), "gemv_glu of {m}x{k} @ {}x{k}^T", 2 * n);
    assert!(x.len() >= m * k && w.len() >= 2 * n * k && out.len() >= m * n, "gemv_glu buffers");
    launch_gemv(device, "gemv_glu_m8", out, x, w, [m, n, k], n.div_ceil(8))
}

/// The KV cache layer and the per-row metadata that `gemv_rope_kv` rotates by and writes to, as
/// `rope_write_kv` takes them.
pub struct RopeKvTarget<'a, 'b> {
    pub k_cache: &'a mut CudaSlice<bf16>,
    pub v_cache: &'a mut CudaSlice<bf16>,
    pub positions: &'a CudaView<'b, u32>,
    pub slots: &'a CudaView<'b, u32>,
    pub cos: &'a CudaSlice<f32>,
    pub sin: &'a CudaSlice<f32>,
    pub heads: Heads,
}

/// Whether `gemv_rope_kv` takes `m` rows of `k` against the fused q|k|v weight `w` of `n` rows:
/// where `gemv` would run the 8-row kernel (m <= 8 and a weight of at most GEMV_R8_MAX_N rows),
/// with whole q|k|v rows of heads of a multiple of 8 dimensions and a position and a slot per row.
pub fn gemv_rope_kv_supports(
    device: &Device,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    [m, n, k]: [usize; 3],
    target: &RopeKvTarget<'_, '_>,
) -> bool {
    let heads = target.heads;
    m <= 8
        && gemv_supports(device, x, w, m, n, k)
        && gemv_block_rows(n) == 8
        && heads.head_dim > 0
        && heads.head_dim.is_multiple_of(8)
        && (heads.num_heads + 2 * heads.num_kv_heads) * heads.head_dim == heads.row_width
        && heads.row_width as usize == n
        && target.positions.len() == m
        && target.slots.len() == m
}

/// `out[m, n] = x[m, k] @ w[n, k]^T` for a fused q|k|v weight, then `rope_write_kv` of `out`
/// (rope.cu), in one kernel (gemv.cu's `gemv_rope_kv_m8_r8`). The caller checked
/// `gemv_rope_kv_supports`, and the positions and slots against the RoPE table and the cache as
/// for `rope_write_kv`.
pub fn gemv_rope_kv(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    [m, n, k]: [usize; 3],
    target: RopeKvTarget<'_, '_>,
) -> Result<()> {
    assert!(gemv_rope_kv_supports(device, x, w, [m, n, k], &target), "gemv_rope_kv of {m}x{k} @ {n}x{k}^T");
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n, "gemv_rope_kv buffers");
    assert_eq!(target.cos.len(), target.sin.len());
    assert_eq!(target.k_cache.len(), target.v_cache.len());
    let (m32, n32, k32) = (m as u32, n as u32, k as u32);
    let heads = target.heads;
    let mut b = KernelLaunch::new(device, "gemv_rope_kv_m8_r8");
    b.arg(out).arg(x).arg(w).arg(&m32).arg(&n32).arg(&k32);
    b.arg(target.k_cache).arg(target.v_cache).arg(target.positions).arg(target.slots);
    b.arg(target.cos).arg(target.sin).arg(&heads.num_heads).arg(&heads.num_kv_heads).arg(&heads.head_dim);
    // SAFETY: as `launch_gemv` for out, x and w; n / 8 blocks each own 4 dimension pairs of one
    // head (n is whole heads of a multiple of 8 dimensions); the caller checked the positions
    // against the RoPE tables and the slots against the cache (padding slots are skipped).
    unsafe { b.launch(cfg((n as u32 / 8, 1, 1), GEMV_THREADS, 0)) }
}

/// Launches the GEMV kernel `name` (every one takes `out, x, w, m, n, k`) on `blocks` blocks;
/// the callers checked the buffers against the shape.
fn launch_gemv(
    device: &Device,
    name: &str,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    [m, n, k]: [usize; 3],
    blocks: usize,
) -> Result<()> {
    let (m32, n32, k32) = (m as u32, n as u32, k as u32);
    let mut b = KernelLaunch::new(device, name);
    b.arg(out).arg(x).arg(w).arg(&m32).arg(&n32).arg(&k32);
    // SAFETY: x holds m x k values, w the weight's rows (n, or 2n gate|up rows for the GLU) of k
    // values, out m x n, all 16-byte aligned with k % 8 == 0 (`gemv_supports`, asserted by `gemv`
    // and `gemv_glu`); the kernels clamp their reads to those extents and write only rows < m and
    // columns < n.
    unsafe { b.launch(cfg((blocks as u32, 1, 1), GEMV_THREADS, 0)) }
}
