//! Decode lookahead (`engine.decode_lookahead`) through the `Engine` on one GPU: greedy generation
//! with decode steps queued ahead of their plans gives exactly the tokens of generation without
//! (the same kernels on the same batches), across block boundaries and requests ending at
//! different steps; the queued steps are used (those that leave out a request that just ended
//! too), and a batch that changes discards at most the one queued for it. Runs with TESSERA_GPU_TESTS=1 (loud SKIPPED otherwise). It installs a metrics
//! recorder for the process, so it lives in its own file.

#![cfg(feature = "cuda")]

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tessera_core::config::Device;
use tessera_engine::{Engine, Prompt};

fn lookahead_steps(snapshotter: &Snapshotter, outcome: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == "tessera_decode_lookahead_steps_total"
                && key.key().labels().any(|l| l.key() == "outcome" && l.value() == outcome)
        })
        .map(|(_, _, _, value)| if let DebugValue::Counter(c) = value { *c } else { 0 })
        .sum()
}

/// Every prompt at once, each with its own length, greedy; the tokens of each.
async fn generate(lookahead: bool, prompts: &[(Vec<u32>, u32)]) -> Vec<Vec<u32>> {
    let mut config = fixture_config("llama");
    config.device = Device::Cuda;
    config.engine.decode_lookahead = lookahead;
    let engine = Engine::start(config).await.unwrap();
    let runs = prompts.iter().map(|(p, n)| run(&engine, Prompt::Tokens(p.clone()), greedy(*n)));
    let outcomes = futures_util::future::join_all(runs).await;
    engine.shutdown().await;
    // The rank frees its device state before the next engine starts or the process exits.
    assert!(tessera_engine::wait_for_worker_threads(std::time::Duration::from_secs(15)));
    outcomes
        .into_iter()
        .map(|o| {
            assert!(o.reason().is_some(), "{:?}", o.terminal);
            o.token_ids
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_decode_steps_give_the_tokens_of_plain_steps() {
    if std::env::var("TESSERA_GPU_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED queued_decode_steps_give_the_tokens_of_plain_steps (set TESSERA_GPU_TESTS=1 on a GPU machine)");
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    // Lengths that end at different steps and cross several 16-token blocks.
    let prompts: Vec<(Vec<u32>, u32)> =
        (0..6).map(|i| (byte_prompt(i, 7 + 5 * i as usize), 20 + 17 * i as u32)).collect();
    let plain = generate(false, &prompts).await;
    assert_eq!(lookahead_steps(&snapshotter, "used"), 0, "lookahead off queues nothing");
    let chained = generate(true, &prompts).await;
    let (used, discarded) =
        (lookahead_steps(&snapshotter, "used"), lookahead_steps(&snapshotter, "discarded"));
    let steps: usize = prompts.iter().map(|(_, n)| *n as usize).max().unwrap();
    eprintln!(
        "decode lookahead: {used} queued steps used, {discarded} discarded, over {steps} decode steps or so"
    );
    for (i, (a, b)) in chained.iter().zip(&plain).enumerate() {
        assert_eq!(a, b, "prompt {i}: tokens differ with the lookahead on");
    }
    // Every request ended by length or on an end-of-sequence token; one that stopped early
    // costs at most one discarded step, and most decode steps were queued ahead.
    let early = plain.iter().zip(&prompts).filter(|(t, (_, n))| t.len() < *n as usize).count() as u64;
    assert!(discarded <= early, "{discarded} discarded with {early} early stops");
    // The decode steps not queued ahead: the first three, at most one after each request's end
    // (the step after the one that lost it; `lookahead.rs`), and for an end-of-sequence stop the
    // step queued with the request still in it, discarded.
    let not_queued = 3 + prompts.len() + early as usize;
    assert!(used as usize + not_queued >= steps, "only {used} of ~{steps} steps were queued ahead");
}
