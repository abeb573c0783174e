//! What runs on a worker's own OS thread: the model runner and the thread that owns it.

mod accel;
#[cfg(feature = "cuda")]
mod cuda_accel;
mod lookahead;
mod runner;
mod thread;

pub use accel::{DeviceAccel, DeviceSample};
#[cfg(feature = "cuda")]
pub use cuda_accel::CudaAccel;
pub use runner::ModelRunner;
pub use thread::{
    wait_for_worker_threads, ArmedFault, ExecutorFactory, ExecutorFactoryArgs, FaultInjection, FaultKind,
    WorkerJob, WorkerReply, WorkerThread,
};

use tessera_core::step::{StepPlan, StepResult};

/// One rank's executor of plans. Rank 0 returns the sampled tokens; other ranks return `None`.
pub trait StepExecutor: Send {
    fn execute(&mut self, plan: &StepPlan) -> Result<Option<StepResult>, String>;
}
