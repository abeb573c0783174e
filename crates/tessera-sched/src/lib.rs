//! The scheduling policy, as plain deterministic code: which sequences compute how many tokens in
//! each step, under a token budget, a sequence limit and a fixed number of KV blocks.
//!
//! The engine drives it in a loop:
//!
//! ```text
//! add_request / abort / finish   (any time between steps)
//! plan = schedule()              -> StepPlan to every worker
//! outputs = update(&plan, &result)  <- StepResult from rank 0; tokens and finishes per request
//! ```
//!
//! `schedule.rs` states the policy; `tests/simulation.rs` states the starvation bound, argues it and
//! checks it for every request of a 200,000-step simulation.
//!
//! Architecture invariant: no IO, no async runtime, no actors, no devices, no clocks. The same
//! calls in the same order give the same plans, which is what the simulation tests rely on.

mod error;
mod schedule;
mod scheduler;
mod sequence;
mod update;

pub use error::AdmissionError;
pub use scheduler::{Scheduler, SchedulerStats};
pub use sequence::SeqKey;
pub use update::RequestOutput;
