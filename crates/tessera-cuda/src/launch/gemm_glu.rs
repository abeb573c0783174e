//! Launcher of the Hopper gate|up GEMM with the SwiGLU epilogue (gemm_glu.cu): TMA tensor maps
//! for x and the fused weight, and a persistent grid over its 128 x 128 output tiles.

use super::builder::TensorMap;
use super::{aligned16, cfg, KernelLaunch};
use crate::device::{backend_err, Device};
use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;
use tessera_model::Result;

/// Output rows and columns of a block, and the k slice of a TMA box (gemm_glu.cu's GG_BM, GG_BN,
/// GG_BK): x boxes are 64 x 128 rows, weight boxes 64 x 128 rows of gate and of up.
const TILE_M: usize = 128;
const TILE_N: usize = 128;
const SLICE_K: u32 = 64;
const THREADS: u32 = 384;
/// GG_SMEM_BYTES: four stages of a 16 KB x tile and a 32 KB weight tile, and 1 KB to align them.
pub const GEMM_GLU_SMEM: usize = 4 * (16 + 32) * 1024 + 1024;

/// Whether `gemm_glu` computes `silu(x @ w[..n]^T) * (x @ w[n..]^T)` for x `[m, k]` and a fused
/// gate|up weight `w` `[2n, k]` here: an sm_90 GPU (the kernel is wgmma and TMA), whole output
/// tiles of columns (n % 128 == 0, so no tile mixes gate rows with up rows), rows of whole
/// 16-byte vectors (TMA's stride rule) on 16-byte aligned buffers, a block's shared memory
/// within the GPU's limit, and the kernel loaded (device.rs loads it where the driver takes it).
pub fn gemm_glu_supports(
    device: &Device,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    device.arch == (9, 0)
        && device.has_function("gemm_glu")
        && m > 0
        && n > 0
        && n.is_multiple_of(TILE_N)
        && k > 0
        && k.is_multiple_of(8)
        && m <= u32::MAX as usize
        && 2 * n <= u32::MAX as usize
        && k <= u32::MAX as usize
        && GEMM_GLU_SMEM <= device.shared_optin
        && aligned16(device, x)
        && aligned16(device, w)
}

/// The tensor map of a row-major bf16 matrix `[rows, cols]` at `ptr`, boxes of 64 columns x 128
/// rows with the 128-byte swizzle (one box row is 128 bytes); reads past the edges give zeros.
fn tensor_map(ptr: u64, rows: usize, cols: usize) -> Result<TensorMap> {
    let dims = [cols as u64, rows as u64];
    let strides = [cols as u64 * 2];
    let boxes = [SLICE_K, TILE_M as u32];
    let element_strides = [1u32, 1];
    let mut map = TensorMap(cudarc::driver::sys::CUtensorMap { opaque: [0; 16] });
    // SAFETY: the arrays hold rank (2) dims, rank - 1 strides, rank box sizes and element
    // strides; the driver only encodes them into `map` (checked: 16-byte aligned address,
    // strides multiples of 16, boxes of at most 256 elements and 128 bytes of inner extent).
    unsafe {
        cuTensorMapEncodeTiled(
            &mut map.0,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(backend_err("tensor map"))?;
    Ok(map)
}

/// `out[m, n] = silu(x @ w[..n]^T) * (x @ w[n..]^T)` in one kernel; the caller checked
/// `gemm_glu_supports`.
pub fn gemm_glu(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    assert!(gemm_glu_supports(device, x, w, m, n, k), "gemm_glu of {m}x{k} @ {}x{k}^T", 2 * n);
    assert!(x.len() >= m * k && w.len() >= 2 * n * k && out.len() >= m * n, "gemm_glu buffers");
    let x_map = tensor_map(x.device_ptr(&device.stream).0, m, k)?;
    let w_map = tensor_map(w.device_ptr(&device.stream).0, 2 * n, k)?;
    // Persistent blocks (gemm_glu.cu): one per SM at most, each walking its share of the tiles;
    // an even count, as the kernel's cluster variant (GG_CLUSTER 2) pairs them.
    let tiles = m.div_ceil(TILE_M) * (n / TILE_N);
    let blocks = (tiles + tiles % 2).min(device.num_sms as usize & !1).max(2);
    let (m32, n32, k32) = (m as u32, n as u32, k as u32);
    let mut b = KernelLaunch::new(device, "gemm_glu");
    b.arg(out).tensor_map(&x_map).tensor_map(&w_map).arg(&m32).arg(&n32).arg(&k32);
    // SAFETY: the maps describe x ([m, k]) and w ([2n, k]) exactly, so TMA reads nothing outside
    // them (it fills zeros past the edges); the kernel writes out's rows < m and the n columns of
    // its tiles, n % 128 == 0; its shared memory was raised to GEMM_GLU_SMEM at load
    // (`gemm_glu_supports` checked the GPU allows it).
    unsafe { b.launch(cfg((blocks as u32, 1, 1), THREADS, GEMM_GLU_SMEM as u32)) }
}
