//! Shared helpers of the GPU tests: the TESSERA_GPU_TESTS gate, bf16-exact random inputs, error
//! measures, and the transformers fixtures of tests/fixtures/models.

#![allow(dead_code)]

pub mod group;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::PathBuf;
use tessera_core::config::ModelConfig;
use tessera_model::weights::HostTensor;
use tessera_model::{open_model, Backend, ModelFiles, ModelInput};

/// Whether GPU tests run here; prints a loud line when they do not.
pub fn gpu_tests_enabled(test: &str) -> bool {
    if std::env::var("TESSERA_GPU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("SKIPPED {test} (set TESSERA_GPU_TESTS=1 on a GPU machine)");
    false
}

/// Random values already rounded to bf16, so both backends start from identical inputs.
pub fn random_bf16(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| half::bf16::from_f32(rng.gen_range(-scale..scale)).to_f32()).collect()
}

pub fn host_bf16(shape: Vec<usize>, values: &[f32]) -> HostTensor {
    let data = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    HostTensor { dtype: tessera_model::DType::Bf16, shape, data }
}

/// A `[rows, cols]` activation holding `values`, made through the trait on any backend: the
/// embedding of tokens 0..rows from a table of those rows.
pub fn activation<B: Backend>(b: &B, rows: usize, cols: usize, values: &[f32]) -> B::Tensor {
    let table = b.upload(host_bf16(vec![rows, cols], values)).unwrap();
    let input = ModelInput {
        block_size: 16,
        token_ids: (0..rows as u32).collect(),
        positions: vec![0; rows],
        slot_mapping: vec![0; rows],
        seqs: Vec::new(),
        logits_indices: Vec::new(),
    };
    b.embedding(&table, 0, &b.prepare(&input).unwrap()).unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude; NaN or infinity in
/// the result never passes.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("non-finite value {} at {i}", got[i]);
    }
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// bf16 keeps 8 significant bits: about 4e-3 per rounding; a few roundings stay under this.
pub const BF16_TOL: f32 = 1e-2;

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let err = relative_error(got, want);
    eprintln!("{what}: relative error {err:.2e}");
    assert!(err <= tol, "{what}: relative error {err:e} above {tol:e}");
}

pub const ARCHITECTURES: [&str; 4] = ["llama", "qwen2", "qwen3", "mistral"];

pub fn fixture_dir(name: &str) -> PathBuf {
    // TESSERA_FIXTURES lets prebuilt test binaries run from another checkout (scripts/gpu-check.sh).
    let root = std::env::var_os("TESSERA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models"));
    root.join(name)
}

pub struct Case {
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

/// One prompt of the 1B-shape reference (`scripts/gpu/llama1b_reference.py`'s expected.json).
pub struct Llama1bCase {
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    /// The reference's top-1 margin at each greedy step.
    pub margins: Vec<f64>,
    /// The first step's logits.
    pub logits: Vec<f32>,
}

pub fn load_llama1b_cases(dir: &std::path::Path) -> Vec<Llama1bCase> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Llama1bCase {
            prompt: ids(&c["prompt_ids"]),
            greedy: ids(&c["greedy_ids"]),
            margins: floats(&c["margins"]),
            logits: floats(&c["last_logits"]).into_iter().map(|x| x as f32).collect(),
        })
        .collect()
}
