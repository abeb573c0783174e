//! Errors of the pure core.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A sampling parameter is out of range; `param` is its name as the API spells it.
    #[error("invalid sampling parameter `{param}`: {message}")]
    InvalidSamplingParam { param: &'static str, message: String },
}
