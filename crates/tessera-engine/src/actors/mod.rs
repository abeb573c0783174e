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
