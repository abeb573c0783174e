//! The Tessera engine: ractor actors around the pure scheduler and the model, and `Engine`, the
//! in-process API.
//!
//! ```text
//! Engine::generate -> SchedulerActor <-- plan/result -- CoordinatorActor -- Execute --> WorkerActor x N
//!        |                 |  (KV events once per step)                               (own OS thread each)
//!   RequestStream <--- raw token ids                  KvManagerActor
//!  (detokenize, stop strings)
//! ```

pub mod actors;
mod cpu_group;
pub mod detokenizer;
mod devices;
mod engine;
pub mod error;
pub mod health;
mod metrics;
pub mod sampler;
pub mod stop;
mod stream;
pub mod worker;

pub use actors::kv_manager::KvSnapshot;
pub use actors::scheduler::EngineStats;
pub use cpu_group::cpu_rank_executor;
#[cfg(feature = "cuda")]
pub use devices::cuda_rank_executor;
pub use devices::{cpu_num_blocks, DeviceGroup, GroupProvider};
pub use engine::{Engine, EngineOptions, GenerateRequest, Prompt};
pub use error::EngineError;
pub use health::HealthState;
pub use stream::{Completion, RequestStream, TokenEvent, TokenOutput};
pub use worker::{wait_for_worker_threads, FaultInjection, FaultKind};
