//! Shared helpers for tests against the transformers fixtures in tests/fixtures/models.

#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use tessera_core::config::ModelConfig;
use tessera_cpu::CpuBackend;
use tessera_model::{open_model, DType, Model, ModelFiles, TpRank};

pub const ARCHITECTURES: [&str; 4] = ["llama", "qwen2", "qwen3", "mistral"];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models").join(name)
}

pub struct Case {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
}

pub fn cases(name: &str) -> Vec<Case> {
    let path = fixture_dir(name).join("expected.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            prompt_ids: ids(&c["prompt_ids"]),
            greedy_ids: ids(&c["greedy_ids"]),
            last_logits: c["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

pub fn open(name: &str) -> ModelFiles {
    let config = ModelConfig { path: Some(fixture_dir(name)), ..Default::default() };
    open_model(&config).unwrap()
}

pub fn load(backend: &CpuBackend, files: &ModelFiles, tp: TpRank) -> Model<CpuBackend> {
    Model::load(
        backend,
        &files.spec,
        files.source.as_ref(),
        DType::F32,
        tp,
        files.spec.max_position_embeddings,
    )
    .unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude: a per-element
/// relative error is meaningless for logits near zero.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    assert!(got.iter().all(|v| v.is_finite()), "non-finite values");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}
