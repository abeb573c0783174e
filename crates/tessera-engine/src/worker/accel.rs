//! Device shortcuts for a step, beyond the `Backend` operations every device has: replaying a
//! captured decode step (CUDA graphs) and choosing greedy tokens on the device, so a step reads
//! back 4 bytes per sequence instead of its logits. The CPU backend has none: its runner runs
//! every step eagerly and samples on the host. `cuda_accel.rs` is the CUDA one.

use tessera_model::{Backend, ModelInput, Result};

pub trait DeviceAccel<B: Backend>: Send {
    /// Runs `input` from a captured graph when one fits it (a decode batch within the captured
    /// sizes); false when the step must run eagerly. The logits stay on the device
    /// (`replayed_logits`).
    fn replay(&mut self, backend: &B, input: &ModelInput) -> Result<bool>;
    /// The logits of the last replay: its first `input.num_tokens()` rows are the batch's, the
    /// rest padding.
    fn replayed_logits(&self) -> &B::Tensor;
    /// Rows `0..rows` of `logits` in host memory, row-major.
    fn rows_to_host(&self, backend: &B, logits: &B::Tensor, rows: usize) -> Result<Vec<f32>>;
    /// The greedy choice of rows `0..rows` of `logits`, exactly the host sampler's `argmax`.
    fn argmax_rows(&self, backend: &B, logits: &B::Tensor, rows: usize) -> Result<Vec<u32>>;
}
