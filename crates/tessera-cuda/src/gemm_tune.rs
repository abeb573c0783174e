//! GEMMs whose cuBLASLt algorithm was measured fastest for their exact shape.
//!
//! Why: decode batches past the GEMV's range (9 to a few hundred rows) read every weight once and
//! are memory-bound, while cuBLAS's heuristic picks tiles for compute. At batch 256 ncu showed its
//! 256 x 128 tiles giving gate|up 224 blocks on 132 SMs (1.7 waves) and the step's weights read
//! at 68% of the copy bandwidth. cuBLASLt lists several algorithms for a shape; `GemmTuner::tune`
//! times them, and the default cuBLAS call, on the layer's own weight and keeps the fastest for
//! that (m, n, k). Tuning happens only at startup, where the host may wait on the device: the
//! eager forward that precedes each decode graph's capture (`graphs.rs`), so every captured batch
//! size is tuned, and the profiling pass's budget-filling prefill (`profile.rs`). Nothing is timed
//! while serving. A shape never tuned keeps the default cuBLAS call.
//! TESSERA_GEMM_TUNE=0 turns tuning off (for A/B measurements).
//!
//! Timing each candidate in sustained bursts on a GPU held at its power limit, as it is while
//! serving, was tried (72d4b45) and picked no faster kernels at concurrency 256 (H100,
//! docs/benchmarks.md, session 15), so single runs on a cool GPU remain the measure.

use crate::device::backend_err;
use crate::gemm::Output;
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tessera_model::{ModelError, Result};

/// How many algorithms to ask cuBLASLt's heuristic for.
const CANDIDATES: usize = 16;
/// Timed runs of each candidate; the median counts.
const ROUNDS: usize = 5;
/// Written before every timed run so that the weight comes from memory, as in a real step where
/// other layers ran in between: more than the 50 MB L2 of an H100 or H200.
const FLUSH_BYTES: usize = 64 << 20;
/// A cuBLASLt algorithm replaces the default call only when faster by this fraction, so that
/// timing noise does not swap a kernel for an equal one.
const MIN_GAIN: f64 = 0.02;

fn lt_err(what: &'static str) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> ModelError {
    move |e| ModelError::Backend(format!("cuBLASLt {what}: {e}"))
}

/// Row-major `out[m, n] = x[m, k] @ w[n, k]^T` as cuBLASLt sees it (column-major):
/// `out^T (n x m) = w^T (op T of the k x n matrix w) @ x^T (k x m)`.
pub(crate) struct LtPlan {
    desc: sys::cublasLtMatmulDesc_t,
    w_layout: sys::cublasLtMatrixLayout_t,
    x_layout: sys::cublasLtMatrixLayout_t,
    out_layout: sys::cublasLtMatrixLayout_t,
}

/// A shape's plan with the algorithm tuning chose for it.
pub(crate) struct Chosen {
    plan: LtPlan,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are created once, never modified afterwards, and only read by
// cublasLtMatmul; the backend runs all its work on one stream.
unsafe impl Send for LtPlan {}
unsafe impl Sync for LtPlan {}

/// Sets one attribute of a matmul preference to `value`.
///
/// # Safety
/// `pref` is live and `T` is the attribute's type.
unsafe fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> std::result::Result<(), cudarc::cublaslt::result::CublasError> {
    lt::set_matmul_pref_attribute(pref, attr, value as *const T as *const _, std::mem::size_of::<T>())
}

impl LtPlan {
    fn new(m: usize, n: usize, k: usize) -> Result<Self> {
        let bf = sys::cudaDataType::CUDA_R_16BF;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_err("matmul descriptor"))?;
        // Owned from here on, so every early return below destroys what was created.
        let mut plan = LtPlan {
            desc,
            w_layout: std::ptr::null_mut(),
            x_layout: std::ptr::null_mut(),
            out_layout: std::ptr::null_mut(),
        };
        let transpose: i32 = 1;
        // SAFETY: a live descriptor and a 4-byte attribute value.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &transpose as *const i32 as *const _,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(lt_err("transpose attribute"))?;
        plan.w_layout =
            lt::create_matrix_layout(bf, k as u64, n as u64, k as i64).map_err(lt_err("layout"))?;
        plan.x_layout =
            lt::create_matrix_layout(bf, k as u64, m as u64, k as i64).map_err(lt_err("layout"))?;
        plan.out_layout =
            lt::create_matrix_layout(bf, n as u64, m as u64, n as i64).map_err(lt_err("layout"))?;
        Ok(plan)
    }

    /// Up to `CANDIDATES` algorithms cuBLASLt's heuristic offers for this shape within
    /// `workspace_bytes`, best guess first.
    fn candidates(
        &self,
        handle: sys::cublasLtHandle_t,
        workspace_bytes: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(CANDIDATES);
        let mut found = 0i32;
        // SAFETY: live descriptors; the results array has room for CANDIDATES entries, of which
        // the call initialises `found`.
        // Split-K partial sums only in f32 in the workspace: no in-place reduction (which may add
        // them in any order) and none in bf16, so every run gives the same bits.
        let schemes = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
        use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        let status = unsafe {
            set_pref(pref, Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes)
                .and_then(|()| set_pref(pref, Pref::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes))
                .and_then(|()| {
                    sys::cublasLtMatmulAlgoGetHeuristic(
                        handle,
                        self.desc,
                        self.w_layout,
                        self.x_layout,
                        self.out_layout,
                        self.out_layout,
                        pref,
                        CANDIDATES as i32,
                        results.as_mut_ptr(),
                        &mut found,
                    )
                    .result()
                })
        };
        // SAFETY: created above, destroyed once.
        unsafe { lt::destroy_matmul_pref(pref) }.map_err(lt_err("preference"))?;
        status.map_err(lt_err("heuristic"))?;
        // SAFETY: the call wrote `found` (at most CANDIDATES) entries.
        unsafe { results.set_len((found.max(0) as usize).min(CANDIDATES)) };
        Ok(results
            .into_iter()
            .filter(|r| {
                r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= workspace_bytes
            })
            .map(|r| r.algo)
            .collect())
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan (or is null) and is destroyed once.
        unsafe {
            for layout in [self.w_layout, self.x_layout, self.out_layout] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// What tuning one shape measured, in microseconds (median of `ROUNDS`).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmTuning {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The default cuBLAS call.
    pub default_us: f64,
    /// The fastest cuBLASLt algorithm and its index in the heuristic's list, if any ran.
    pub best_lt: Option<(usize, f64)>,
    /// How many cuBLASLt algorithms were timed.
    pub candidates: usize,
    /// Whether the cuBLASLt algorithm replaced the default call.
    pub chosen: bool,
    /// Every timed run's median in microseconds, fastest first: index 0 the default call, i + 1
    /// the i-th cuBLASLt algorithm.
    pub medians: Medians,
}

/// (run index, median microseconds) of each timed run, fastest first.
pub type Medians = Vec<(usize, f64)>;

/// (m, n, k) of `out[m, n] = x[m, k] @ w[n, k]^T`.
type Shape = (usize, usize, usize);
/// The cuBLASLt plan that won for a shape, or None where the default call did.
pub(crate) type Decision = Option<Arc<Chosen>>;

pub(crate) struct GemmTuner {
    handle: sys::cublasLtHandle_t,
    /// cuBLAS's workspace (device.rs), shared: both libraries run on the one stream in order.
    workspace: (u64, usize),
    enabled: bool,
    tuning: AtomicBool,
    plans: Mutex<HashMap<Shape, Decision>>,
    tunings: Mutex<Vec<GemmTuning>>,
    flush: Mutex<Option<CudaSlice<u8>>>,
}

// SAFETY: the handle is used only through cuBLASLt calls, which are thread-safe for a handle on
// one stream; the maps are behind mutexes.
unsafe impl Send for GemmTuner {}
unsafe impl Sync for GemmTuner {}

impl GemmTuner {
    /// `workspace`: device pointer and size of a buffer that outlives the tuner.
    pub fn new(workspace: (u64, usize)) -> Result<Self> {
        let handle = lt::create_handle().map_err(lt_err("handle"))?;
        Ok(GemmTuner {
            handle,
            workspace,
            enabled: std::env::var("TESSERA_GEMM_TUNE").map_or(true, |v| v != "0"),
            tuning: AtomicBool::new(false),
            plans: Mutex::new(HashMap::new()),
            tunings: Mutex::new(Vec::new()),
            flush: Mutex::new(None),
        })
    }

    /// The decision for a shape: `Some(Some(plan))` runs cuBLASLt, `Some(None)` the default call,
    /// `None` not tuned yet.
    pub fn planned(&self, m: usize, n: usize, k: usize) -> Option<Decision> {
        self.plans.lock().expect("plans").get(&(m, n, k)).cloned()
    }

    /// Whether a GEMM of an untuned shape should be tuned now.
    pub fn is_tuning(&self) -> bool {
        self.enabled && self.tuning.load(Ordering::Relaxed)
    }

    /// Runs `f` with tuning on (shapes it meets are tuned), then frees the tuning's scratch memory.
    pub fn while_tuning<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Reset<'a>(&'a GemmTuner);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.tuning.store(false, Ordering::Relaxed);
            }
        }
        self.tuning.store(true, Ordering::Relaxed);
        let out = {
            let _reset = Reset(self);
            f()
        };
        // The scratch buffer's free is stream-ordered after the timings that used it.
        drop(self.flush.lock().expect("flush").take());
        out
    }

    /// Every shape tuned so far, in order.
    pub fn tunings(&self) -> Vec<GemmTuning> {
        self.tunings.lock().expect("tunings").clone()
    }

    /// Runs the algorithm tuning chose for this shape.
    pub fn run_chosen(
        &self,
        stream: &Arc<CudaStream>,
        chosen: &Chosen,
        out: &mut CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        output: Output,
    ) -> Result<()> {
        self.run(stream, &chosen.plan, &chosen.algo, out, (x, w), output)
    }

    /// Runs `plan` with algorithm `algo`.
    fn run(
        &self,
        stream: &Arc<CudaStream>,
        plan: &LtPlan,
        algo: &sys::cublasLtMatmulAlgo_t,
        out: &mut CudaSlice<bf16>,
        (x, w): (&CudaSlice<bf16>, &CudaSlice<bf16>),
        output: Output,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, output.beta());
        let (w_ptr, _w) = w.device_ptr(stream);
        let (x_ptr, _x) = x.device_ptr(stream);
        let (out_ptr, _o) = out.device_ptr_mut(stream);
        // SAFETY: the layouts match the buffers (shapes checked by `gemm::linear_with` and
        // `gemm::linear_accumulate`); C and D are the same buffer with the same layout, which
        // cuBLASLt allows, and with beta = 1 it reads C, which the caller has initialised (the
        // residual); the workspace outlives the tuner; `algo` came from the heuristic for this
        // plan.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const _,
                &beta as *const f32 as *const _,
                w_ptr as *const _,
                plan.w_layout,
                x_ptr as *const _,
                plan.x_layout,
                out_ptr as *const _,
                plan.out_layout,
                out_ptr as *mut _,
                plan.out_layout,
                algo as *const _,
                self.workspace.0 as *mut _,
                self.workspace.1,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(lt_err("matmul"))
    }

    /// Times the default call (`default`) and every cuBLASLt candidate on these buffers,
    /// remembers the winner for (m, n, k) with the measurements, and returns it. Waits for the
    /// device through `wait` (the backend's, bounded by the collective deadline in a group).
    pub fn tune(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut CudaSlice<bf16>,
        (x, w): (&CudaSlice<bf16>, &CudaSlice<bf16>),
        (m, n, k): Shape,
        default: &dyn Fn(&mut CudaSlice<bf16>) -> Result<()>,
        wait: &dyn Fn() -> Result<()>,
    ) -> Result<Decision> {
        let plan = LtPlan::new(m, n, k)?;
        let algos = plan.candidates(self.handle, self.workspace.1)?;
        let mut flush_slot = self.flush.lock().expect("flush");
        if flush_slot.is_none() {
            // SAFETY: only ever overwritten (memset), never read.
            *flush_slot = Some(unsafe { stream.alloc::<u8>(FLUSH_BYTES) }.map_err(backend_err("alloc"))?);
        }
        let flush = flush_slot.as_mut().expect("allocated");
        // Index 0 is the default call, i + 1 the i-th cuBLASLt algorithm. A candidate that fails
        // to launch (the heuristic can offer one the shape's alignment rules out) is dropped.
        let run = |i: usize, out: &mut CudaSlice<bf16>| match i {
            0 => default(out),
            i => self.run(stream, &plan, &algos[i - 1], out, (x, w), Output::Overwrite),
        };
        let mut live: Vec<usize> = Vec::new();
        for i in 0..=algos.len() {
            if run(i, out).is_ok() {
                live.push(i);
            } else if i == 0 {
                return Err(ModelError::Backend(format!("cuBLAS gemm {m}x{n}x{k} failed while tuning")));
            }
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(ROUNDS * live.len());
        for _ in 0..ROUNDS {
            for &i in &live {
                stream.memset_zeros(flush).map_err(backend_err("memset"))?;
                let start = stream.record_event(flags).map_err(backend_err("event"))?;
                run(i, out)?;
                let end = stream.record_event(flags).map_err(backend_err("event"))?;
                events.push((i, start, end));
            }
        }
        wait()?;
        let mut times: HashMap<usize, Vec<f64>> = HashMap::new();
        for (i, start, end) in &events {
            let ms = start.elapsed_ms(end).map_err(backend_err("event timing"))? as f64;
            times.entry(*i).or_default().push(ms * 1e3);
        }
        let (default_us, best_lt, chosen, medians) = pick(times);
        let candidates = live.len() - 1;
        let decision = match best_lt {
            Some((i, _)) if chosen => Some(Arc::new(Chosen { plan, algo: algos[i] })),
            _ => None,
        };
        self.plans.lock().expect("plans").insert((m, n, k), decision.clone());
        let tuning = GemmTuning { m, n, k, default_us, best_lt, candidates, chosen, medians };
        self.tunings.lock().expect("tunings").push(tuning);
        Ok(decision)
    }

    /// The output of every cuBLASLt algorithm `tune` would time for one shape, for tests that
    /// check each against a reference: the product, or with `add_to` that buffer's copy plus
    /// the product, added in place (C == D) as an accumulating GEMM runs.
    pub fn candidate_outputs(
        &self,
        stream: &Arc<CudaStream>,
        (x, w): (&CudaSlice<bf16>, &CudaSlice<bf16>),
        (m, n, k): Shape,
        add_to: Option<&CudaSlice<bf16>>,
    ) -> Result<Vec<CudaSlice<bf16>>> {
        let plan = LtPlan::new(m, n, k)?;
        let algos = plan.candidates(self.handle, self.workspace.1)?;
        let mut outs = Vec::with_capacity(algos.len());
        for algo in &algos {
            let (mut out, output) = match add_to {
                Some(init) => (stream.clone_dtod(init).map_err(backend_err("copy"))?, Output::Accumulate),
                None => (stream.alloc_zeros::<bf16>(m * n).map_err(backend_err("alloc"))?, Output::Overwrite),
            };
            if self.run(stream, &plan, algo, &mut out, (x, w), output).is_ok() {
                outs.push(out);
            }
        }
        Ok(outs)
    }
}

/// From each run's timings in microseconds (index 0: the default call, i + 1: the i-th cuBLASLt
/// algorithm; the default must be present): the default's median, the fastest algorithm by
/// median (index into the algorithms, median), whether it beats the default by `MIN_GAIN`, and
/// every run's median, fastest first. Equal medians go to the lower index, so the outcome does
/// not depend on map order.
fn pick(mut times: HashMap<usize, Vec<f64>>) -> (f64, Option<(usize, f64)>, bool, Medians) {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut medians: Medians =
        times.iter_mut().filter(|(_, v)| !v.is_empty()).map(|(i, v)| (*i, median(v))).collect();
    medians.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let default_us = medians.iter().find(|(i, _)| *i == 0).expect("the default ran").1;
    let best_lt = medians.iter().find(|(i, _)| *i > 0).map(|&(i, us)| (i - 1, us));
    let chosen = best_lt.is_some_and(|(_, us)| us < default_us * (1.0 - MIN_GAIN));
    (default_us, best_lt, chosen, medians)
}

impl Drop for GemmTuner {
    fn drop(&mut self) {
        self.plans.lock().expect("plans").clear();
        // SAFETY: created in `new`, destroyed once, after every plan that used it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(runs: &[(usize, &[f64])]) -> HashMap<usize, Vec<f64>> {
        runs.iter().map(|(i, v)| (*i, v.to_vec())).collect()
    }

    /// `pick`'s decision without the list of medians.
    fn decide(t: HashMap<usize, Vec<f64>>) -> (f64, Option<(usize, f64)>, bool) {
        let (default_us, best, chosen, _) = pick(t);
        (default_us, best, chosen)
    }

    #[test]
    fn the_fastest_median_wins_when_it_beats_the_default_by_the_margin() {
        // Algorithm 1 (index 2) has the lowest median; one slow outlier does not count.
        let t = times(&[(0, &[10.0, 10.2, 9.9]), (1, &[9.5, 9.6, 9.4]), (2, &[9.0, 30.0, 9.1])]);
        assert_eq!(decide(t), (10.0, Some((1, 9.1)), true));
    }

    #[test]
    fn a_gain_below_the_margin_keeps_the_default() {
        let t = times(&[(0, &[10.0, 10.0, 10.0]), (1, &[9.9, 9.9, 9.9])]);
        let (default_us, best, chosen) = decide(t);
        assert_eq!((default_us, best), (10.0, Some((0, 9.9))));
        assert!(!chosen, "1% is within the 2% margin");
    }

    #[test]
    fn a_slower_algorithm_or_none_keeps_the_default() {
        assert_eq!(decide(times(&[(0, &[5.0]), (1, &[6.0])])), (5.0, Some((0, 6.0)), false));
        assert_eq!(decide(times(&[(0, &[5.0])])), (5.0, None, false));
    }

    #[test]
    fn equal_medians_go_to_the_lower_index() {
        let t = times(&[(0, &[10.0]), (3, &[8.0]), (2, &[8.0]), (5, &[8.0])]);
        assert_eq!(decide(t), (10.0, Some((1, 8.0)), true));
    }

    #[test]
    fn medians_are_listed_fastest_first() {
        let t = times(&[(0, &[10.0, 12.0, 11.0]), (1, &[9.0, 8.0, 30.0]), (2, &[20.0])]);
        let (_, _, _, medians) = pick(t);
        assert_eq!(medians, vec![(1, 9.0), (0, 11.0), (2, 20.0)]);
    }
}
