//! Why a request was not admitted.

use tessera_core::{CoreError, RequestId};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum AdmissionError {
    /// The waiting queue is full; try again later (HTTP 429).
    #[error("overloaded: {max_waiting_requests} requests are already waiting")]
    Overloaded { max_waiting_requests: usize },
    /// The request could not run even on an idle engine (HTTP 400).
    #[error("request can never be scheduled: {reason}")]
    NeverFits { reason: String },
    #[error("request has an empty prompt")]
    EmptyPrompt,
    #[error("{0} is already known to the scheduler")]
    DuplicateRequest(RequestId),
    #[error(transparent)]
    InvalidSamplingParams(#[from] CoreError),
}
