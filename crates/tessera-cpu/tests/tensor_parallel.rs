//! Tensor parallelism across threads on the CPU backend: TP=2 and TP=4 give transformers' greedy
//! tokens and logits, as TP=1 does.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tessera_cpu::{CpuBackend, LocalGroup};
use tessera_model::{argmax, SingleSequence, TpRank};

/// Runs greedy generation for one case on `world` ranks; returns rank 0's tokens and first logits.
fn greedy_tp(name: &str, case: &Case, world: usize) -> (Vec<u32>, Vec<f32>) {
    let files = open(name);
    let group = LocalGroup::new(world, Duration::from_secs(30));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .ranks()
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let files = &files;
                s.spawn(move || {
                    let backend = CpuBackend::with_collective(Arc::new(comm));
                    let model = load(&backend, files, TpRank { rank, world });
                    let mut seq =
                        SingleSequence::new(&backend, &model, 16, 8, (0..8).rev().collect()).unwrap();
                    let first = seq.step(&backend, &case.prompt_ids).unwrap();
                    let mut tokens = vec![argmax(&first)];
                    while tokens.len() < case.greedy_ids.len() {
                        let logits = seq.step(&backend, &tokens[tokens.len() - 1..]).unwrap();
                        tokens.push(argmax(&logits));
                    }
                    (tokens, first)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (tokens, _)) in results.iter().enumerate() {
        assert_eq!(tokens, &results[0].0, "rank {rank} disagrees with rank 0");
    }
    results.into_iter().next().unwrap()
}

#[test]
fn tp2_and_tp4_match_transformers() {
    for name in ARCHITECTURES {
        for case in cases(name).iter().skip(1).take(2) {
            for world in [2, 4] {
                let (tokens, logits) = greedy_tp(name, case, world);
                let err = relative_error(&logits, &case.last_logits);
                assert!(err < 1e-4, "{name} TP={world}: logits relative error {err:e}");
                assert_eq!(tokens, case.greedy_ids, "{name} TP={world}: greedy tokens differ");
            }
        }
    }
}

#[test]
fn tensor_parallel_size_must_divide_the_heads() {
    let files = open("llama");
    let backend = CpuBackend::new();
    let err = tessera_model::Model::load(
        &backend,
        &files.spec,
        files.source.as_ref(),
        tessera_model::DType::F32,
        TpRank { rank: 0, world: 3 },
        64,
    )
    .err()
    .expect("TP=3 cannot split 8 heads");
    assert!(err.to_string().contains("does not divide num_attention_heads"), "{err}");
}
