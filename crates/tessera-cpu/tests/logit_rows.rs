//! The last layer runs o_proj and the MLP on the rows whose logits are wanted only
//! (`Model::forward`): those logits must be the ones a forward keeping every row gives, and the
//! K/V of the other rows must still be written.

mod common;

use common::*;
use tessera_cpu::CpuBackend;
use tessera_model::{Backend, Model, ModelInput, SeqChunk, TpRank};

const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 16;

struct Run {
    logits: Vec<f32>,
    cache: <CpuBackend as Backend>::KvCache,
}

fn run(backend: &CpuBackend, model: &Model<CpuBackend>, input: &ModelInput, cache: Option<Run>) -> Run {
    let mut cache = match cache {
        Some(run) => run.cache,
        None => backend.alloc_kv_cache(model.kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE)).unwrap(),
    };
    let batch = backend.prepare(input).unwrap();
    let logits = model.forward(backend, &batch, &mut cache).unwrap();
    Run { logits: backend.to_host(&logits).unwrap(), cache }
}

fn chunk<'a>(tokens: &'a [u32], computed: usize, blocks: &'a [u32], wants_logits: bool) -> SeqChunk<'a> {
    SeqChunk { new_tokens: tokens, num_computed_tokens: computed, block_table: blocks, wants_logits }
}

/// The llama fixture and its longest prompt, with transformers' logits of the prompt's last token.
struct Fixture {
    backend: CpuBackend,
    model: Model<CpuBackend>,
    vocab: usize,
    prompt: Vec<u32>,
    last_logits: Vec<f32>,
}

fn fixture() -> Fixture {
    let backend = CpuBackend::new();
    let files = open("llama");
    let model = load(&backend, &files, TpRank::SINGLE);
    let case = cases("llama").into_iter().max_by_key(|c| c.prompt_ids.len()).unwrap();
    Fixture {
        backend,
        model,
        vocab: files.spec.vocab_size,
        prompt: case.prompt_ids,
        last_logits: case.last_logits,
    }
}

#[test]
fn logits_rows_match_a_forward_that_keeps_every_row() {
    let Fixture { backend, model, vocab, prompt, last_logits } = fixture();
    let prompt = &prompt;
    let half = prompt.len() / 2;
    let (a_blocks, b_blocks): (Vec<u32>, Vec<u32>) = ((0..4).collect(), (4..8).collect());
    // Sequence a computes the first half of the prompt (no logits: a prompt chunk), sequence b
    // the whole prompt (the logits of its last token).
    let narrowed = ModelInput::build(
        BLOCK_SIZE,
        &[chunk(&prompt[..half], 0, &a_blocks, false), chunk(prompt, 0, &b_blocks, true)],
    );
    assert_eq!(narrowed.logits_indices, [narrowed.num_tokens() - 1]);
    let mut every_row = narrowed.clone();
    every_row.logits_indices = (0..every_row.num_tokens()).collect();

    let first = run(&backend, &model, &narrowed, None);
    let full = run(&backend, &model, &every_row, None);
    assert_eq!(first.logits.len(), vocab, "one logits row");
    assert_eq!(full.logits.len(), every_row.num_tokens() * vocab);
    let last = &full.logits[(every_row.num_tokens() - 1) * vocab..];
    let err = relative_error(&first.logits, last);
    assert!(err < 1e-5, "narrowed and full last layer differ: {err:e}");
    assert!(relative_error(&first.logits, &last_logits) < 1e-4);
    // Every row of a forward that keeps them all is a real row: sequence a's last row holds the
    // logits of its chunk's last token, not a copy of b's.
    let a_last = &full.logits[(half - 1) * vocab..half * vocab];
    assert!(relative_error(a_last, last) > 1e-3, "rows of different tokens should differ");

    // The K/V of a's chunk, computed beside b in the narrowed step, serves the rest of a.
    let rest = ModelInput::build(BLOCK_SIZE, &[chunk(&prompt[half..], half, &a_blocks, true)]);
    let second = run(&backend, &model, &rest, Some(first));
    let err = relative_error(&second.logits, &last_logits);
    assert!(err < 1e-4, "prompt finished after a chunk without logits: {err:e}");
}

#[test]
fn a_step_without_logits_rows_writes_its_kv_and_returns_none() {
    let Fixture { backend, model, prompt, last_logits, .. } = fixture();
    let prompt = &prompt;
    let half = prompt.len() / 2;
    let blocks: Vec<u32> = (0..4).rev().collect();
    let first = run(
        &backend,
        &model,
        &ModelInput::build(BLOCK_SIZE, &[chunk(&prompt[..half], 0, &blocks, false)]),
        None,
    );
    assert!(first.logits.is_empty(), "no row wanted logits");
    let rest = ModelInput::build(BLOCK_SIZE, &[chunk(&prompt[half..], half, &blocks, true)]);
    let second = run(&backend, &model, &rest, Some(first));
    let err = relative_error(&second.logits, &last_logits);
    assert!(err < 1e-4, "prompt finished after a step without logits: {err:e}");
}
