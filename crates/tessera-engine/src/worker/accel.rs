//! Device shortcuts for a step, beyond the `Backend` operations every device has: replaying a
//! captured decode step (CUDA graphs) and choosing tokens on the device, so a step reads back 4
//! bytes per sequence instead of its logits, and queueing the next greedy decode step behind the
//! running one (chaining, see `runner.rs`). The CPU backend has none: its runner runs every step
//! eagerly and samples on the host. `cuda_accel.rs` is the CUDA one.

use tessera_core::SamplingParams;
use tessera_model::{Backend, ModelInput, Result};

/// One row's draw as the host sampler would make it (`crate::sampler`), for a device to make.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSample<'a> {
    pub params: &'a SamplingParams,
    /// `sampler::uniform(seed, position)`: the number the host's draw would use.
    pub uniform: f64,
    /// `sampler::penalized_tokens(prompt, output)`, or empty when no penalty is on.
    pub penalized: Vec<(u32, u32)>,
}

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
    /// The token of each of rows `0..rows.len()` of `logits`, drawn as the host sampler draws it
    /// from the same uniform number (a draw within rounding of a boundary may differ). Logprobs
    /// are not the device's: a step that wants them samples on the host.
    fn sample_rows(&self, backend: &B, logits: &B::Tensor, rows: &[DeviceSample<'_>]) -> Result<Vec<u32>>;

    /// Whether the calls below may be used (`engine.decode_lookahead`, graphs on, one rank).
    fn can_chain(&self) -> bool;
    /// Chooses the greedy token of rows `0..rows` of the last replay on the device, where the
    /// next `replay_chained` takes them from, and queues their copy to the host (`take_tokens`).
    /// At most two are queued.
    fn queue_argmax(&mut self, backend: &B, rows: usize) -> Result<()>;
    /// Queues `input` behind the running step, as `replay` does, but with row `i`'s token taken
    /// on the device from row `rows[i]` of the last `queue_argmax` (`input`'s token ids are not
    /// read; `rows` ascend). False when no graph fits; then nothing was queued.
    fn replay_chained(&mut self, backend: &B, input: &ModelInput, rows: &[usize]) -> Result<bool>;
    /// The tokens of the oldest queued `queue_argmax`, waiting for its step to end.
    fn take_tokens(&mut self) -> Result<Vec<u32>>;
    /// Forgets the oldest queued tokens: a chained step whose plan did not come.
    fn discard_tokens(&mut self);
}
