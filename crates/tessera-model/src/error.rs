//! Loading errors. Every variant names the file (or source) and the field or tensor at fault.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: missing field `{field}`")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: field `{field}`: {message}")]
    InvalidField { path: PathBuf, field: String, message: String },
    #[error("{path}: unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture { path: PathBuf, architecture: String, supported: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` not found in {searched}")]
    MissingTensor { name: String, searched: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("unknown dummy shape `{name}` (known: {known})")]
    UnknownShape { name: String, known: String },
    #[error("tensor parallel size {world} does not divide {what} ({count})")]
    NotDivisible { what: &'static str, count: usize, world: usize },
    #[error("backend: {0}")]
    Backend(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
