//! Reading a step's logits back: whole rows for the host sampler, or only the greedy choice of
//! each row (4 bytes instead of a row of the vocabulary), computed on the device.

use crate::backend::CudaBackend;
use crate::device::backend_err;
use crate::launch;
use crate::tensor::CudaTensor;
use tessera_model::Result;

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
        launch::argmax_rows(&self.device, &mut out, &logits.data, logits.cols)?;
        self.device.stream.clone_dtoh(&out).map_err(backend_err("copy to host"))
    }
}
