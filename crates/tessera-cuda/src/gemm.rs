//! `x @ w^T` through cuBLAS in bf16 with f32 accumulation.

use crate::device::Device;
use crate::tensor::CudaTensor;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use half::bf16;
use tessera_model::{ModelError, Result};

/// Row-major `out[m, n] = x[m, k] @ w[n, k]^T`. cuBLAS is column-major, so this computes
/// `out^T = w @ x^T` with `w` transposed in place of the row-major view.
pub fn linear(device: &Device, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
    assert_eq!(x.cols, w.cols, "linear: x has {} features, the weight {}", x.cols, w.cols);
    let (m, n, k) = (x.rows, w.rows, x.cols);
    // SAFETY: allocation only; cuBLAS writes every element (beta = 0). An empty result still
    // gets one element, since the driver refuses zero-byte allocations.
    let mut out = unsafe { device.stream.alloc::<bf16>((m * n).max(1)) }
        .map_err(|e| ModelError::Backend(format!("CUDA alloc: {e}")))?;
    if m > 0 {
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: the shapes above match the buffers' lengths (asserted and allocated here).
        unsafe { device.blas.gemm(cfg, &w.data, &x.data, &mut out) }
            .map_err(|e| ModelError::Backend(format!("cuBLAS gemm {m}x{n}x{k}: {e}")))?;
    }
    Ok(CudaTensor { rows: m, cols: n, data: out })
}
