//! Launchers of the GEMV kernels (gemv.cu) for decode-sized batches.

use super::{aligned16, cfg, KernelLaunch};
use crate::device::Device;
use cudarc::driver::CudaSlice;
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
