//! The CUDA device's shortcuts: decode steps replayed from CUDA graphs captured when the worker
//! starts (after its KV cache exists), tokens chosen on the GPU.

use super::accel::{DeviceAccel, DeviceSample};
use tessera_cuda::{CudaBackend, CudaKvCache, CudaTensor, DecodeGraphs, SamplingRow};
use tessera_model::{Model, ModelInput, Result};

pub struct CudaAccel {
    graphs: Option<DecodeGraphs>,
    /// `engine.decode_lookahead`, on one rank only: ranks of a group would all have to chain
    /// the same steps, which is not done yet.
    chain: bool,
}

impl CudaAccel {
    /// Captures the decode graphs of `sizes` (none when empty: graphs are off) and logs what
    /// they cost. `chain`: whether greedy decode steps may be queued one ahead.
    pub fn capture(
        backend: &CudaBackend,
        model: &Model<CudaBackend>,
        cache: &mut CudaKvCache,
        sizes: &[usize],
        chain: bool,
    ) -> Result<Self> {
        let graphs = if sizes.is_empty() {
            tracing::info!("CUDA graphs off: every step runs eagerly");
            None
        } else {
            let graphs = DecodeGraphs::capture(backend, model, cache, sizes)?;
            let report = graphs.report();
            tracing::info!(
                batch_sizes = ?report.batch_sizes,
                capture_ms = report.capture_ms,
                graph_pool_mib = report.graph_pool_bytes >> 20,
                static_mib = report.static_bytes >> 20,
                "captured decode CUDA graphs"
            );
            Some(graphs)
        };
        log_gemm_tunings(backend);
        Ok(CudaAccel { chain: chain && graphs.is_some(), graphs })
    }
}

/// What GEMM tuning (during profiling and the graphs' warm-up runs) found, summed over the
/// shapes it timed: the default cuBLAS calls against the chosen ones.
fn log_gemm_tunings(backend: &CudaBackend) {
    let tunings = backend.gemm_tunings();
    if tunings.is_empty() {
        return;
    }
    // Per shape (RUST_LOG=tessera::gemm=debug): every candidate's median, fastest first, as
    // `index:us` with 0 the default cuBLAS call and i the i-th cuBLASLt algorithm.
    for t in &tunings {
        let medians: Vec<String> = t.medians.iter().map(|(i, us)| format!("{i}:{us:.1}")).collect();
        tracing::debug!(
            target: "tessera::gemm",
            m = t.m,
            n = t.n,
            k = t.k,
            chosen = t.chosen,
            medians = %medians.join(" "),
            "tuned GEMM"
        );
    }
    let default_us: f64 = tunings.iter().map(|t| t.default_us).sum();
    let chosen_us: f64 = tunings
        .iter()
        .map(|t| match t.best_lt {
            Some((_, us)) if t.chosen => us,
            _ => t.default_us,
        })
        .sum();
    tracing::info!(
        shapes = tunings.len(),
        cublaslt_chosen = tunings.iter().filter(|t| t.chosen).count(),
        default_ms = default_us / 1e3,
        chosen_ms = chosen_us / 1e3,
        "tuned GEMMs (one call of each shape, summed)"
    );
}

impl DeviceAccel<CudaBackend> for CudaAccel {
    fn replay(&mut self, backend: &CudaBackend, input: &ModelInput) -> Result<bool> {
        match &mut self.graphs {
            Some(graphs) => Ok(graphs.replay(backend, input)?.is_some()),
            None => Ok(false),
        }
    }

    fn replayed_logits(&self) -> &CudaTensor {
        self.graphs.as_ref().expect("replayed_logits after a replay").logits()
    }

    fn rows_to_host(&self, backend: &CudaBackend, logits: &CudaTensor, rows: usize) -> Result<Vec<f32>> {
        backend.rows_to_host(logits, rows)
    }

    fn argmax_rows(&self, backend: &CudaBackend, logits: &CudaTensor, rows: usize) -> Result<Vec<u32>> {
        backend.argmax_rows(logits, rows)
    }

    fn sample_rows(
        &self,
        backend: &CudaBackend,
        logits: &CudaTensor,
        rows: &[DeviceSample<'_>],
    ) -> Result<Vec<u32>> {
        let rows: Vec<SamplingRow<'_>> = rows
            .iter()
            .map(|r| SamplingRow {
                temperature: r.params.temperature,
                top_k: r.params.top_k,
                top_p: r.params.top_p,
                min_p: r.params.min_p,
                repetition_penalty: r.params.repetition_penalty,
                frequency_penalty: r.params.frequency_penalty,
                presence_penalty: r.params.presence_penalty,
                uniform: r.uniform,
                penalized: &r.penalized,
            })
            .collect();
        backend.sample_rows(logits, &rows)
    }

    fn can_chain(&self) -> bool {
        self.chain && self.graphs.is_some()
    }

    fn queue_argmax(&mut self, backend: &CudaBackend, rows: usize) -> Result<()> {
        self.graphs_mut().queue_argmax(backend, rows)
    }

    fn replay_chained(&mut self, backend: &CudaBackend, input: &ModelInput, rows: &[usize]) -> Result<bool> {
        self.graphs_mut().replay_chained(backend, input, rows)
    }

    fn take_tokens(&mut self) -> Result<Vec<u32>> {
        self.graphs_mut().take_tokens()
    }

    fn discard_tokens(&mut self) {
        self.graphs_mut().discard_tokens()
    }
}

impl CudaAccel {
    fn graphs_mut(&mut self) -> &mut DecodeGraphs {
        self.graphs.as_mut().expect("chaining needs graphs (can_chain)")
    }
}
