//! From the `model` config section to what a worker needs: the spec, the tokenizer, a weight
//! source. Nothing here touches a device.

use crate::error::{ModelError, Result};
use crate::shapes::dummy_spec;
use crate::spec::{DType, ModelSpec};
use crate::tokenizer::Tokenizer;
use crate::weights::{DummySource, SafetensorsSource, WeightSource};
use tessera_core::config::{ModelConfig, WeightDtype};

pub struct ModelFiles {
    pub spec: ModelSpec,
    pub tokenizer: Tokenizer,
    pub source: Box<dyn WeightSource>,
    /// The name the model is served under.
    pub name: String,
}

/// Resolves the model config: a Hugging Face directory (real or dummy weights) or a named shape.
pub fn open_model(config: &ModelConfig) -> Result<ModelFiles> {
    let Some(dir) = &config.path else {
        let spec = dummy_spec(&config.dummy_shape)?;
        return Ok(ModelFiles {
            spec,
            tokenizer: Tokenizer::Bytes,
            source: Box::new(DummySource::new(config.seed)),
            name: config.served_model_name.clone().unwrap_or_else(|| config.dummy_shape.clone()),
        });
    };
    let spec = ModelSpec::from_dir(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer =
        if tokenizer_path.exists() { Tokenizer::from_file(&tokenizer_path)? } else { Tokenizer::Bytes };
    let source: Box<dyn WeightSource> = if config.uses_dummy_weights() {
        Box::new(DummySource::new(config.seed))
    } else {
        Box::new(SafetensorsSource::open(dir)?)
    };
    let name = config.served_model_name.clone().unwrap_or_else(|| {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
    });
    Ok(ModelFiles { spec, tokenizer, source, name })
}

/// The dtype weights are kept in: the config's choice, else the checkpoint's, else `fallback`.
pub fn weight_dtype(config: &ModelConfig, spec: &ModelSpec, fallback: DType) -> DType {
    match config.dtype {
        WeightDtype::Bf16 => DType::Bf16,
        WeightDtype::F16 => DType::F16,
        WeightDtype::F32 => DType::F32,
        WeightDtype::Auto => spec.dtype.unwrap_or(fallback),
    }
}

/// The context limit: the config's `max_model_len`, which may not exceed what the model supports.
pub fn max_model_len(config: &ModelConfig, spec: &ModelSpec) -> Result<usize> {
    match config.max_model_len {
        None => Ok(spec.max_position_embeddings),
        Some(len) if len <= spec.max_position_embeddings => Ok(len),
        Some(len) => Err(ModelError::InvalidField {
            path: "config".into(),
            field: "model.max_model_len".into(),
            message: format!(
                "{len} exceeds the model's max_position_embeddings ({})",
                spec.max_position_embeddings
            ),
        }),
    }
}
