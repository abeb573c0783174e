//! Named model shapes for dummy weights (`load_format = "dummy"`): real architectures' sizes with
//! seeded random weights, so benchmarks and demos run without any files.

use crate::error::{ModelError, Result};
use crate::spec::{Architecture, Llama3RopeScaling, ModelSpec, RopeSpec};
use crate::tokenizer::{BYTE_BOS, BYTE_EOS};

/// Names accepted by `--dummy`.
pub const SHAPE_NAMES: [&str; 6] =
    ["tiny", "llama-3.2-1b", "llama-3-8b", "llama-3-70b", "qwen2.5-7b", "qwen3-8b"];

pub fn dummy_spec(name: &str) -> Result<ModelSpec> {
    let llama3_scaling = |factor| {
        Some(Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })
    };
    let base = ModelSpec {
        architecture: Architecture::Llama,
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope: RopeSpec { theta: 10_000.0, llama3_scaling: None },
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
        bos_token_id: Some(BYTE_BOS),
        eos_token_ids: vec![BYTE_EOS],
        dtype: None,
    };
    let llama3 = ModelSpec {
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        rope: RopeSpec { theta: 500_000.0, llama3_scaling: llama3_scaling(8.0) },
        max_position_embeddings: 131_072,
        ..base.clone()
    };
    Ok(match name {
        "tiny" => base,
        "llama-3.2-1b" => ModelSpec {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            head_dim: 64,
            tie_word_embeddings: true,
            rope: RopeSpec { theta: 500_000.0, llama3_scaling: llama3_scaling(32.0) },
            ..llama3
        },
        "llama-3-8b" => llama3,
        "llama-3-70b" => ModelSpec {
            hidden_size: 8192,
            intermediate_size: 28_672,
            num_layers: 80,
            num_heads: 64,
            ..llama3
        },
        "qwen2.5-7b" => ModelSpec {
            architecture: Architecture::Qwen2,
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_layers: 28,
            num_heads: 28,
            num_kv_heads: 4,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope: RopeSpec { theta: 1_000_000.0, llama3_scaling: None },
            max_position_embeddings: 32_768,
            qkv_bias: true,
            ..base
        },
        "qwen3-8b" => ModelSpec {
            architecture: Architecture::Qwen3,
            vocab_size: 151_936,
            hidden_size: 4096,
            intermediate_size: 12_288,
            num_layers: 36,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope: RopeSpec { theta: 1_000_000.0, llama3_scaling: None },
            max_position_embeddings: 40_960,
            qk_norm: true,
            ..base
        },
        _ => return Err(ModelError::UnknownShape { name: name.into(), known: SHAPE_NAMES.join(", ") }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_shape_exists_and_parameter_counts_are_plausible() {
        for name in SHAPE_NAMES {
            let spec = dummy_spec(name).unwrap();
            assert_eq!(spec.num_heads % spec.num_kv_heads, 0, "{name}");
        }
        let billions = |name| dummy_spec(name).unwrap().num_params() as f64 / 1e9;
        assert!((7.9..8.1).contains(&billions("llama-3-8b")));
        assert!((70.0..71.0).contains(&billions("llama-3-70b")));
        assert!((1.2..1.3).contains(&billions("llama-3.2-1b")));
        assert!((7.5..7.7).contains(&billions("qwen2.5-7b")));
    }

    #[test]
    fn unknown_shape_lists_the_known_ones() {
        let err = dummy_spec("gpt-5").unwrap_err().to_string();
        assert!(err.contains("gpt-5") && err.contains("llama-3-8b"), "{err}");
    }
}
