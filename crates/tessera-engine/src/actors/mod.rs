//! The actors of one engine replica. Each has one closed message enum with the reply port last.
//!
//! - `SchedulerActor` owns the scheduling policy (`tessera_sched::Scheduler`) and every
//!   request's event channel.
//! - `KvManagerActor` keeps the exact prefix-cache contents from the KV events the scheduler
//!   sends once per step (for routers and metrics).
//! - `CoordinatorActor` drives the step loop and supervises the workers.
//! - `WorkerActor` is the thin front of one rank's OS thread.

pub mod coordinator;
pub mod kv_manager;
pub mod scheduler;
pub mod worker;

// With ractor's `cluster` feature (needed by tessera-cluster) messages implement `Message`
// explicitly; these never leave the process, so the default (not serializable) is right.
impl ractor::Message for coordinator::CoordinatorMsg {}
impl ractor::Message for kv_manager::KvManagerMsg {}
impl ractor::Message for scheduler::SchedulerMsg {}
impl ractor::Message for worker::WorkerMsg {}
