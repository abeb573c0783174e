//! The CPU backend against Hugging Face transformers on identical random checkpoints
//! (scripts/reference/make_fixtures.py): last-position logits within 1e-4 relative error and 32
//! greedy tokens identical, for every architecture of the family.

mod common;

use common::*;
use tessera_cpu::CpuBackend;
use tessera_model::{argmax, SingleSequence, TpRank};

const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 64;

/// A scrambled block table, so that a sequence's blocks are neither contiguous nor in order.
fn scrambled_blocks(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % NUM_BLOCKS as u32).collect()
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let backend = CpuBackend::new();
    for name in ARCHITECTURES {
        let files = open(name);
        let model = load(&backend, &files, TpRank::SINGLE);
        for (i, case) in cases(name).iter().enumerate() {
            let encoded = files.tokenizer.encode(&case.prompt, true).unwrap();
            assert_eq!(encoded, case.prompt_ids, "{name} case {i}: tokenizer disagrees with transformers");

            let mut seq =
                SingleSequence::new(&backend, &model, BLOCK_SIZE, NUM_BLOCKS, scrambled_blocks(8)).unwrap();
            let logits = seq.step(&backend, &case.prompt_ids).unwrap();
            let err = relative_error(&logits, &case.last_logits);
            assert!(err < 1e-4, "{name} case {i}: logits relative error {err:e}");
            eprintln!(
                "{name} case {i}: {} prompt tokens, logits relative error {err:.2e}",
                case.prompt_ids.len()
            );

            let mut generated = vec![argmax(&logits)];
            while generated.len() < case.greedy_ids.len() {
                let logits = seq.step(&backend, &generated[generated.len() - 1..]).unwrap();
                generated.push(argmax(&logits));
            }
            assert_eq!(generated, case.greedy_ids, "{name} case {i}: greedy tokens differ");
        }
    }
}

/// A prompt computed in chunks (as chunked prefill and prefix-cache hits do) gives the same
/// logits as computed at once.
#[test]
fn chunked_prefill_matches_whole_prefill() {
    let backend = CpuBackend::new();
    for name in ["llama", "qwen3"] {
        let files = open(name);
        let model = load(&backend, &files, TpRank::SINGLE);
        let case = cases(name).into_iter().max_by_key(|c| c.prompt_ids.len()).unwrap();
        let mut seq =
            SingleSequence::new(&backend, &model, BLOCK_SIZE, NUM_BLOCKS, scrambled_blocks(8)).unwrap();
        let mut logits = Vec::new();
        for chunk in case.prompt_ids.chunks(7) {
            logits = seq.step(&backend, chunk).unwrap();
        }
        let err = relative_error(&logits, &case.last_logits);
        assert!(err < 1e-4, "{name}: chunked prefill relative error {err:e}");
    }
}

#[test]
fn eos_and_bos_come_from_the_checkpoint() {
    let files = open("llama");
    assert_eq!(files.spec.eos_token_ids, vec![files.tokenizer.token_to_id("<|end_of_text|>").unwrap()]);
    assert_eq!(files.spec.bos_token_id, files.tokenizer.token_to_id("<|begin_of_text|>"));
}
