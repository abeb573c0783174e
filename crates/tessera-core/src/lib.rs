//! Pure types shared by every Tessera crate.
//!
//! Architecture invariant: this crate does no IO and depends on no async runtime, actor system or
//! device crate. It is the vocabulary the rest of the engine speaks.

pub mod config;
pub mod error;
pub mod ids;
pub mod kv_event;
pub mod openai;
pub mod request;
pub mod sampling;
pub mod step;

pub use config::{ConfigError, EngineConfig};
pub use error::CoreError;
pub use ids::{BlockId, RequestId};
pub use kv_event::{BlockHash, KvEvent};
pub use request::{FinishReason, Request, RequestStatus};
pub use sampling::SamplingParams;
