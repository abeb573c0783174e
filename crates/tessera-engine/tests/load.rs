//! Many concurrent requests, a cache small enough to preempt constantly, and an abort storm.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_core::FinishReason;
use tessera_engine::{Engine, GenerateRequest, Prompt, TokenEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_finish_with_their_lengths() {
    let engine = Engine::start(tiny_config()).await.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let requests: Vec<(Vec<u32>, u32)> =
        (0..200).map(|i| (byte_prompt(i, rng.gen_range(1..60)), rng.gen_range(1..40))).collect();
    let runs = requests.iter().map(|(prompt, n)| {
        let engine = engine.clone();
        let (prompt, n) = (prompt.clone(), *n);
        tokio::spawn(async move { run(&engine, Prompt::Tokens(prompt), greedy(n)).await })
    });
    let outcomes = futures_util::future::join_all(runs).await;
    for (outcome, (_, n)) in outcomes.into_iter().zip(&requests) {
        let outcome = outcome.unwrap();
        assert_eq!(outcome.reason(), Some(FinishReason::Length));
        assert_eq!(outcome.token_ids.len(), *n as usize);
    }
    assert_quiescent(&engine).await;
}

/// Greedy outputs of `prompts`, all submitted at once.
async fn greedy_outputs(engine: &Engine, prompts: &[Vec<u32>], max_tokens: u32) -> Vec<Vec<u32>> {
    let runs = prompts.iter().map(|prompt| {
        let engine = engine.clone();
        let prompt = prompt.clone();
        tokio::spawn(async move { run(&engine, Prompt::Tokens(prompt), greedy(max_tokens)).await })
    });
    futures_util::future::join_all(runs).await.into_iter().map(|o| o.unwrap().token_ids).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_preemption_gives_the_same_greedy_output() {
    let prompts: Vec<Vec<u32>> = (0..16).map(|i| byte_prompt(100 + i, 20 + 3 * i as usize)).collect();
    let large = Engine::start(tiny_config()).await.unwrap();
    let want = greedy_outputs(&large, &prompts, 48).await;

    let mut small = tiny_config();
    // 12 blocks of 16 tokens: room for two or three of these sequences at a time.
    small.cache.num_blocks = Some(12);
    let small = Engine::start(small).await.unwrap();
    let got = greedy_outputs(&small, &prompts, 48).await;
    let stats = small.stats().await.unwrap();
    assert!(stats.scheduler.num_preemptions >= 10, "expected constant preemption: {stats:?}");
    assert_eq!(got, want);
    assert_quiescent(&small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_storm_leaks_nothing_and_frees_within_two_steps() {
    let engine = Engine::start(tiny_config()).await.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let engine = engine.clone();
        let prompt = byte_prompt(i, rng.gen_range(1..80));
        let drop_after = rng.gen_bool(0.3).then(|| rng.gen_range(0..30usize));
        tasks.push(tokio::spawn(async move {
            let request = GenerateRequest::new(Prompt::Tokens(prompt), greedy(40));
            let mut stream = engine.generate(request).await.unwrap();
            let id = stream.request_id();
            let Some(limit) = drop_after else { return (false, drain(stream).await.token_ids.len(), 0) };
            let mut seen = 0;
            while seen < limit {
                match stream.next().await {
                    Some(TokenEvent::Token(_)) => seen += 1,
                    other => panic!("ended early: {other:?}"),
                }
            }
            let before = engine.stats().await.unwrap().num_steps;
            drop(stream);
            // The abort was sent before this query, so the scheduler has processed it.
            assert_eq!(engine.request_status(id).await.unwrap(), None, "aborted request still scheduled");
            let after = engine.stats().await.unwrap().num_steps;
            (true, seen, after - before)
        }));
    }
    let mut num_aborted = 0;
    for task in tasks {
        let (aborted, n, steps_to_free) = task.await.unwrap();
        if aborted {
            num_aborted += 1;
            assert!(steps_to_free <= 2, "blocks freed {steps_to_free} steps after the abort");
        } else {
            assert_eq!(n, 40);
        }
    }
    assert!(num_aborted >= 20, "only {num_aborted} aborted");
    assert_quiescent(&engine).await;
}
