//! Reading a step's logits back: whole rows for the host sampler, or only each row's token (4
//! bytes instead of a row of the vocabulary), chosen on the device: the greedy choice
//! (`argmax_rows`) or a draw with the host sampler's whole definition (`sample_rows`).

use crate::backend::CudaBackend;
use crate::device::backend_err;
use crate::launch::{self, SampleArgs, SAMPLE_FPARAMS};
use crate::tensor::CudaTensor;
use tessera_model::Result;

/// How to choose one row's token on the device: the host sampler's parameters, the uniform
/// number in [0, 1) the host's generator draws for the row's (seed, position), and the tokens the
/// penalties apply to.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingRow<'a> {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub uniform: f64,
    /// Each distinct token of the prompt and the output with its count in the output (empty when
    /// no penalty is on).
    pub penalized: &'a [(u32, u32)],
}

impl CudaBackend {
    /// Rows `0..rows` of `x` in host memory, row-major, as f32.
    pub fn rows_to_host(&self, x: &CudaTensor, rows: usize) -> Result<Vec<f32>> {
        assert!(rows <= x.rows, "{rows} rows of a tensor of {}", x.rows);
        let view = x.data.slice(0..rows * x.cols);
        let host = self.device.stream.clone_dtoh(&view).map_err(backend_err("copy to host"))?;
        Ok(host.iter().map(|v| v.to_f32()).collect())
    }

    /// The greedy choice of rows `0..rows` of `logits`: the first index of the largest value, NaN
    /// never chosen, 0 for a row with nothing above -inf (the host sampler's `argmax`).
    pub fn argmax_rows(&self, logits: &CudaTensor, rows: usize) -> Result<Vec<u32>> {
        assert!(rows <= logits.rows, "{rows} rows of a tensor of {}", logits.rows);
        if rows == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the kernel writes every one of the `rows` entries.
        let mut out = unsafe { self.device.stream.alloc::<u32>(rows) }.map_err(backend_err("alloc"))?;
        launch::argmax_rows(&self.device, &mut out.slice_mut(..), &logits.data, logits.cols)?;
        self.device.stream.clone_dtoh(&out).map_err(backend_err("copy to host"))
    }

    /// The token of each of the first `rows.len()` rows of `logits`, chosen as the host sampler
    /// would from the same uniform number: penalties, then greedy or temperature, top-k, top-p,
    /// min-p and one draw (kernels/sampling.cu). A draw within f64 rounding of a boundary between
    /// two tokens may land on the other one; nothing else differs.
    pub fn sample_rows(&self, logits: &CudaTensor, rows: &[SamplingRow<'_>]) -> Result<Vec<u32>> {
        let n = rows.len();
        assert!(n <= logits.rows, "{n} rows of a tensor of {}", logits.rows);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut fparams = Vec::with_capacity(n * SAMPLE_FPARAMS);
        let mut pen_offsets = vec![0u32];
        let (mut pen_tokens, mut pen_counts) = (Vec::new(), Vec::new());
        for row in rows {
            fparams.extend([
                row.temperature,
                row.top_p,
                row.min_p,
                row.repetition_penalty,
                row.frequency_penalty,
                row.presence_penalty,
            ]);
            pen_tokens.extend(row.penalized.iter().map(|&(token, _)| token));
            pen_counts.extend(row.penalized.iter().map(|&(_, count)| count));
            pen_offsets.push(pen_tokens.len() as u32);
        }
        // The driver refuses empty allocations; the offsets keep the padding unread.
        if pen_tokens.is_empty() {
            (pen_tokens, pen_counts) = (vec![0], vec![0]);
        }
        let top_ks: Vec<u32> = rows.iter().map(|r| r.top_k).collect();
        let uniforms: Vec<f64> = rows.iter().map(|r| r.uniform).collect();
        let stream = &self.device.stream;
        let fparams = stream.clone_htod(&fparams).map_err(backend_err("sampling upload"))?;
        let top_ks = stream.clone_htod(&top_ks).map_err(backend_err("sampling upload"))?;
        let uniforms = stream.clone_htod(&uniforms).map_err(backend_err("sampling upload"))?;
        let pen_offsets = stream.clone_htod(&pen_offsets).map_err(backend_err("sampling upload"))?;
        let pen_tokens = stream.clone_htod(&pen_tokens).map_err(backend_err("sampling upload"))?;
        let pen_counts = stream.clone_htod(&pen_counts).map_err(backend_err("sampling upload"))?;
        let args = SampleArgs {
            fparams: &fparams,
            top_ks: &top_ks,
            uniforms: &uniforms,
            pen_offsets: &pen_offsets,
            pen_tokens: &pen_tokens,
            pen_counts: &pen_counts,
        };
        // SAFETY: `penalize_rows` writes every value of `work` before `sample_rows` reads it, and
        // `sample_rows` writes every entry of `out`.
        let mut work = unsafe { stream.alloc::<f32>(n * logits.cols) }.map_err(backend_err("alloc"))?;
        let mut out = unsafe { stream.alloc::<u32>(n) }.map_err(backend_err("alloc"))?;
        launch::sample_rows(&self.device, &mut out, &mut work, &logits.data, logits.cols, &args)?;
        stream.clone_dtoh(&out).map_err(backend_err("copy to host"))
    }
}
