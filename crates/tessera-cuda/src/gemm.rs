//! `x @ w^T` in bf16 with f32 accumulation: the GEMV kernels (kernels/gemv.cu) for decode-sized
//! batches, cuBLAS for everything else (with the cuBLASLt algorithm measured fastest for shapes
//! that were tuned, gemm_tune.rs).

use crate::backend::CudaBackend;
use crate::device::Device;
use crate::launch;
use crate::tensor::CudaTensor;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use half::bf16;
use tessera_model::{ModelError, Result};

/// The most rows of x that `linear` hands to the GEMV kernels instead of cuBLAS (when the shape
/// allows them: `launch::gemv_supports`). At 1 to 8 rows cuBLAS was measured far from the
/// memory roofline on an H100 (o_proj at 1.5 TB/s, split-K plus a second reduce kernel for qkv
/// and down), while a GEMV streams the weight once at any of those sizes. The op_bench example
/// (`GEMV` and `cuBLAS` columns per batch size) decides this value: raise it to 16 (the kernels'
/// limit, `launch::GEMV_KERNEL_MAX_M`) only if the GEMV still wins there on every shape.
pub const GEMV_MAX_M: usize = 8;

/// Which kernels compute a linear layer: `Auto` is what the model uses (GEMV up to
/// `GEMV_MAX_M` rows, else cuBLAS, tuned where the shape was); the others force one side, for
/// benchmarks and tests: `Cublas` the default cuBLAS call, `Tuned` the tuned choice (tuning the
/// shape first if it was not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    Auto,
    Gemv,
    Cublas,
    Tuned,
}

/// Row-major `out[m, n] = x[m, k] @ w[n, k]^T`, by the kernels `LinearKernel::Auto` picks.
pub fn linear(backend: &CudaBackend, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
    linear_with(backend, x, w, LinearKernel::Auto)
}

pub fn linear_with(
    backend: &CudaBackend,
    x: &CudaTensor,
    w: &CudaTensor,
    kernel: LinearKernel,
) -> Result<CudaTensor> {
    assert_eq!(x.cols, w.cols, "linear: x has {} features, the weight {}", x.cols, w.cols);
    let (m, n, k) = (x.rows, w.rows, x.cols);
    let device = &backend.device;
    let use_gemv = match kernel {
        LinearKernel::Auto => auto_takes_gemv(device, x, w),
        LinearKernel::Gemv if launch::gemv_supports(device, &x.data, &w.data, m, n, k) => true,
        LinearKernel::Gemv => {
            return Err(ModelError::Backend(format!(
                "the GEMV kernels do not take {m}x{k} @ {n}x{k}^T: they need 1 to {} rows, k a \
                 multiple of 8 and 16-byte aligned buffers",
                launch::GEMV_KERNEL_MAX_M
            )))
        }
        LinearKernel::Cublas | LinearKernel::Tuned => false,
    };
    // SAFETY: allocation only; the GEMV or cuBLAS writes every element (cuBLAS with beta = 0).
    // An empty result still gets one element, since the driver refuses zero-byte allocations.
    let mut out = unsafe { device.stream.alloc::<bf16>((m * n).max(1)) }
        .map_err(|e| ModelError::Backend(format!("CUDA alloc: {e}")))?;
    if use_gemv {
        launch::gemv(device, &mut out, &x.data, &w.data, m, n, k)?;
    } else if m > 0 && kernel == LinearKernel::Cublas {
        cublas(device, &mut out, x, w, Output::Overwrite)?;
    } else if m > 0 {
        tuned(backend, &mut out, x, w, kernel == LinearKernel::Tuned, Output::Overwrite)?;
    }
    Ok(CudaTensor { rows: m, cols: n, data: out })
}

/// Whether `LinearKernel::Auto` computes `x @ w^T` by a GEMV: at most `GEMV_MAX_M` rows of a
/// shape the GEMV kernels take.
fn auto_takes_gemv(device: &Device, x: &CudaTensor, w: &CudaTensor) -> bool {
    x.rows <= GEMV_MAX_M && launch::gemv_supports(device, &x.data, &w.data, x.rows, w.rows, x.cols)
}

/// Whether a GEMM writes its product over the output or adds it to what the output holds
/// (cuBLAS's beta = 0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Overwrite,
    Accumulate,
}

impl Output {
    pub fn beta(self) -> f32 {
        match self {
            Output::Overwrite => 0.0,
            Output::Accumulate => 1.0,
        }
    }
}

/// `out += x @ w^T` (row-major, `out` is `[m, n]`) by the GEMM `linear` would run, with the
/// sum taken in f32 inside the GEMM's epilogue: it saves the residual stream a separate add's
/// read and write of every row (`add_rms_norm` becomes `rms_norm`). Returns false, touching
/// nothing, where `linear` would take a GEMV (no accumulating form: at those few rows the add
/// costs nothing) or when TESSERA_RESIDUAL_GEMM=0 (for A/B measurements).
pub fn linear_accumulate(
    backend: &CudaBackend,
    x: &CudaTensor,
    w: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<bool> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("TESSERA_RESIDUAL_GEMM").map_or(true, |v| v != "0"));
    assert_eq!(x.cols, w.cols, "linear: x has {} features, the weight {}", x.cols, w.cols);
    assert_eq!((out.rows, out.cols), (x.rows, w.rows), "linear_accumulate output shape");
    if !on || auto_takes_gemv(&backend.device, x, w) {
        return Ok(false);
    }
    if x.rows > 0 {
        tuned(backend, &mut out.data, x, w, false, Output::Accumulate)?;
    }
    Ok(true)
}

/// Whether `silu(x @ gate^T) * (x @ up^T)` for a fused gate|up weight `w` (gate rows, then up
/// rows) runs as one GEMV with the activation in its epilogue (`launch::gemv_glu`): where
/// `linear` would take the GEMV, a kernel less per layer at decode. TESSERA_GLU=0 turns it off,
/// for A/B measurements.
pub fn glu_applies(device: &Device, x: &CudaTensor, w: &CudaTensor) -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let fused = *FUSED.get_or_init(|| std::env::var("TESSERA_GLU").map_or(true, |v| v != "0"));
    fused && w.rows.is_multiple_of(2) && auto_takes_gemv(device, x, w)
}

/// The fewest rows of x for which `silu(x @ gate^T) * (x @ up^T)` runs as the Hopper GEMM with
/// the activation in its epilogue (`launch::gemm_glu`) instead of cuBLAS then silu_mul, once
/// turned on: below it cuBLAS's tuned algorithms and a 128-row tile's waste decide (op_bench's
/// `--glu-only` rows measure both sides by rows).
pub const GLU_GEMM_MIN_M: usize = 512;

/// Whether the gate|up projection and activation of x run as `launch::gemm_glu`: on sm_90 for
/// shapes it takes, from `GLU_GEMM_MIN_M` rows on, when TESSERA_GLU_GEMM=1 (`all`: from the
/// GEMV's limit up). Off by default until a GPU run has shown the kernel correct and faster than
/// the split path (docs/benchmarks.md, session 20: no GPU could be had to run it).
pub fn glu_gemm_applies(device: &Device, x: &CudaTensor, w: &CudaTensor) -> bool {
    static MODE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let min_rows = *MODE.get_or_init(|| match std::env::var("TESSERA_GLU_GEMM").as_deref() {
        Ok("1") => Some(GLU_GEMM_MIN_M),
        Ok("all") => Some(GEMV_MAX_M + 1),
        _ => None,
    });
    min_rows.is_some_and(|min| x.rows >= min)
        && w.rows.is_multiple_of(2)
        && launch::gemm_glu_supports(device, &x.data, &w.data, x.rows, w.rows / 2, x.cols)
}

/// The choice tuning made for this shape; tunes it first when tuning is on (or `force`d) and it
/// was not yet, else the default cuBLAS call. Tuning always times overwriting calls; an
/// accumulating one (o_proj and down_proj of a Llama model) runs the same choice.
fn tuned(
    backend: &CudaBackend,
    out: &mut cudarc::driver::CudaSlice<bf16>,
    x: &CudaTensor,
    w: &CudaTensor,
    force: bool,
    output: Output,
) -> Result<()> {
    let (m, n, k) = (x.rows, w.rows, x.cols);
    let device = &backend.device;
    let tuner = &device.gemm_tuner;
    let plan = match tuner.planned(m, n, k) {
        Some(plan) => plan,
        None if force || tuner.is_tuning() => {
            let default = |out: &mut _| cublas(device, out, x, w, Output::Overwrite);
            // The backend's wait: bounded by the collective deadline in a tensor-parallel group.
            let wait = || backend.synchronize();
            // Tuning times the calls overwriting the buffer it is given: a scratch buffer where
            // `out` holds a sum that must be added to only once. An accumulating GEMM then runs
            // the choice made for overwriting; on an H100 a prefill step's GEMMs took the same
            // 149.3 ms with the add as without (docs/benchmarks.md, session 13).
            let mut scratch;
            let target = match output {
                Output::Overwrite => &mut *out,
                Output::Accumulate => {
                    // SAFETY: allocation only; every timed run writes every element.
                    scratch = unsafe { device.stream.alloc::<bf16>(m * n) }
                        .map_err(|e| ModelError::Backend(format!("CUDA alloc: {e}")))?;
                    &mut scratch
                }
            };
            tuner.tune(&device.stream, target, (&x.data, &w.data), (m, n, k), &default, &wait)?
        }
        None => None,
    };
    match plan {
        Some(chosen) => tuner.run_chosen(&device.stream, &chosen, out, &x.data, &w.data, output),
        None => cublas(device, out, x, w, output),
    }
}

/// cuBLAS is column-major, so this computes `out^T = w @ x^T` with `w` transposed in place of the
/// row-major view.
fn cublas(
    device: &Device,
    out: &mut cudarc::driver::CudaSlice<bf16>,
    x: &CudaTensor,
    w: &CudaTensor,
    output: Output,
) -> Result<()> {
    let (m, n, k) = (x.rows, w.rows, x.cols);
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: bf16::ONE,
        lda: k as i32,
        ldb: k as i32,
        beta: bf16::from_f32(output.beta()),
        ldc: n as i32,
    };
    // SAFETY: the shapes above match the buffers' lengths (asserted and allocated by the caller).
    unsafe { device.blas.gemm(cfg, &w.data, &x.data, out) }
        .map_err(|e| ModelError::Backend(format!("cuBLAS gemm {m}x{n}x{k}: {e}")))
}

impl CudaBackend {
    /// `Backend::linear` without bias, by the kernels `kernel` names: `LinearKernel::Gemv` is an
    /// error for shapes the GEMV does not take. For benchmarks and tests that compare the two.
    pub fn linear_with(&self, x: &CudaTensor, w: &CudaTensor, kernel: LinearKernel) -> Result<CudaTensor> {
        linear_with(self, x, w, kernel)
    }

    /// `silu(x @ w[..n]^T) * (x @ w[n..]^T)` for a fused gate|up weight of 2n rows by the Hopper
    /// GEMM with the activation in its epilogue (`launch::gemm_glu`), whatever the rows; an error
    /// where the kernel does not take the shape or the GPU. For benchmarks and tests.
    pub fn gemm_glu(&self, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        let (m, n, k) = (x.rows, w.rows / 2, x.cols);
        if x.cols != w.cols
            || !w.rows.is_multiple_of(2)
            || !launch::gemm_glu_supports(&self.device, &x.data, &w.data, m, n, k)
        {
            return Err(ModelError::Backend(format!(
                "gemm_glu does not take {m}x{k} @ {}x{}^T on this GPU: it needs sm_90, 2n rows with n \
                 a multiple of 128, k a multiple of 8 and 16-byte aligned buffers",
                w.rows, w.cols
            )));
        }
        let mut out = self.tensor(m, n)?;
        launch::gemm_glu(&self.device, &mut out.data, &x.data, &w.data, m, n, k)?;
        Ok(out)
    }

    /// Runs `f` with GEMM tuning on, as the profiling pass and graph captures do: the shapes
    /// it meets untuned are tuned. For tests.
    pub fn tuning<T>(&self, f: impl FnOnce() -> T) -> T {
        self.device.gemm_tuner.while_tuning(f)
    }

    /// Every GEMM shape tuned so far (gemm_tune.rs), in order: what each algorithm measured and
    /// what was chosen.
    pub fn gemm_tunings(&self) -> Vec<crate::GemmTuning> {
        self.device.gemm_tuner.tunings()
    }

    /// The output of every cuBLASLt algorithm tuning would time for `x @ w^T`, for tests that
    /// check each against a reference; with `add_to`, a copy of it plus the product, added in
    /// place as `linear_into_residual` adds.
    pub fn gemm_candidate_outputs(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        add_to: Option<&CudaTensor>,
    ) -> Result<Vec<CudaTensor>> {
        assert_eq!(x.cols, w.cols, "gemm candidates: x has {} features, the weight {}", x.cols, w.cols);
        let (m, n, k) = (x.rows, w.rows, x.cols);
        if let Some(init) = add_to {
            assert_eq!((init.rows, init.cols), (m, n), "gemm candidates: the sum's shape");
        }
        let tuner = &self.device.gemm_tuner;
        let init = add_to.map(|t| &t.data);
        let outs = tuner.candidate_outputs(&self.device.stream, (&x.data, &w.data), (m, n, k), init)?;
        Ok(outs.into_iter().map(|data| CudaTensor { rows: m, cols: n, data }).collect())
    }
}
