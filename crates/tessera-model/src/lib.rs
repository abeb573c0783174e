//! Model loading and the Llama-family model definition.
//!
//! Architecture invariant: nothing here knows about devices. The model is written against the
//! `Backend` trait; weights arrive from a `WeightSource` as host tensors.

pub mod backend;
pub mod error;
pub mod input;
pub mod llama;
pub mod loader;
pub mod rope;
pub mod shapes;
pub mod single;
pub mod spec;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, KvCacheShape, QkvLayout};
pub use error::{ModelError, Result};
pub use input::{ModelInput, SeqChunk, SeqInput};
pub use llama::{Model, TpRank};
pub use loader::{open_model, ModelFiles};
pub use single::{argmax, SingleSequence};
pub use spec::{Architecture, DType, ModelSpec};
pub use tokenizer::Tokenizer;
