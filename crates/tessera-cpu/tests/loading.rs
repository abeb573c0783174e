//! Checkpoint loading: sharded equals unsharded, and broken files fail naming what is wrong.

mod common;

use common::*;
use std::path::Path;
use tessera_core::config::ModelConfig;
use tessera_cpu::CpuBackend;
use tessera_model::weights::{SafetensorsSource, Shard, WeightSource};
use tessera_model::{argmax, open_model, DType, Model, SingleSequence, TpRank};

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_error(dir: &Path) -> String {
    let config = ModelConfig { path: Some(dir.to_path_buf()), ..Default::default() };
    let files = match open_model(&config) {
        Err(e) => return e.to_string(),
        Ok(files) => files,
    };
    let backend = CpuBackend::new();
    match Model::load(&backend, &files.spec, files.source.as_ref(), DType::F32, TpRank::SINGLE, 64) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
    }
}

#[test]
fn sharded_checkpoint_loads_the_same_tensors_and_logits() {
    let single = SafetensorsSource::open(&fixture_dir("llama")).unwrap();
    let sharded = SafetensorsSource::open(&fixture_dir("llama-sharded")).unwrap();
    let names: Vec<&str> = single.tensor_names().collect();
    assert_eq!(names, sharded.tensor_names().collect::<Vec<_>>());
    for name in names {
        let a = single.get(name, &[], Shard::Full, DType::F32).err();
        // Shapes are checked by `get`; ask with the real shape taken from the unsharded file.
        let shape = match a {
            Some(tessera_model::ModelError::ShapeMismatch { found, .. }) => found,
            other => panic!("expected a shape mismatch for the empty shape, got {other:?}"),
        };
        assert_eq!(
            single.get(name, &shape, Shard::Full, DType::F32).unwrap(),
            sharded.get(name, &shape, Shard::Full, DType::F32).unwrap(),
            "{name}"
        );
    }

    let backend = CpuBackend::new();
    let prompt = &cases("llama")[1].prompt_ids;
    let logits = |name: &str| {
        let model = load(&backend, &open(name), TpRank::SINGLE);
        let mut seq = SingleSequence::new(&backend, &model, 16, 8, (0..8).collect()).unwrap();
        seq.step(&backend, prompt).unwrap()
    };
    let (a, b) = (logits("llama"), logits("llama-sharded"));
    assert_eq!(a, b);
    assert_eq!(argmax(&a), cases("llama")[1].greedy_ids[0]);
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("llama"), dir.path());
    let file = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("llama"), dir.path());
    // Rewrite the checkpoint without one tensor.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.layers.1.mlp.up_proj.weight")
        .collect();
    safetensors::serialize_to_file(kept, &None, &dir.path().join("model.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("not found"), "{err}");
}

#[test]
fn unknown_architecture_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("llama"), dir.path());
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap().replace("LlamaForCausalLM", "FalconForCausalLM");
    std::fs::write(&path, config).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json") && err.contains("unsupported architecture `FalconForCausalLM`"),
        "{err}"
    );
}

#[test]
fn malformed_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir("llama"), dir.path());
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"two\"");
    std::fs::write(&path, config).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("config.json") && err.contains("num_hidden_layers"), "{err}");
}
