//! Errors the engine reports to callers.

use tessera_sched::AdmissionError;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    /// The engine cannot take requests now (restarting after a failure, stopped, shutting down).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The waiting queue is full; retry later.
    #[error("overloaded: {max_waiting_requests} requests are already waiting")]
    Overloaded { max_waiting_requests: usize },
    /// The request is malformed or can never run; retrying will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request was in flight when the worker group failed.
    #[error("worker failure: {0}")]
    WorkerFailed(String),
    #[error("engine failed to start: {0}")]
    Startup(String),
}

impl From<AdmissionError> for EngineError {
    fn from(err: AdmissionError) -> Self {
        match err {
            AdmissionError::Overloaded { max_waiting_requests } => {
                EngineError::Overloaded { max_waiting_requests }
            }
            other => EngineError::InvalidRequest(other.to_string()),
        }
    }
}
