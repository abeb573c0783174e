//! The coordinator fails a step on the first error from any rank, not in rank order: when rank 0
//! is the stuck one, rank 1's collective deadline still fails the group at once instead of the
//! step deadline much later.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tessera_core::config::OnWorkerFailure;
use tessera_engine::{Engine, EngineError, EngineOptions, FaultInjection, FaultKind, Prompt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_1_failing_is_seen_while_rank_0_still_hangs() {
    let mut config = tiny_config();
    config.parallel.tensor_parallel_size = 2;
    config.parallel.collective_timeout_ms = 300;
    config.engine.step_timeout_ms = 60_000;
    config.engine.on_worker_failure = OnWorkerFailure::Exit;
    let fault = FaultInjection { rank: 0, at_step: 3, kind: FaultKind::Hang(Duration::from_secs(10)) };
    let options = EngineOptions { fault: Some(fault), ..Default::default() };
    let engine = Engine::start_with(config, options).await.unwrap();
    let start = Instant::now();
    let outcome = run(&engine, Prompt::Tokens(byte_prompt(1, 10)), greedy(100)).await;
    let elapsed = start.elapsed();
    match outcome.error() {
        Some(EngineError::WorkerFailed(reason)) => assert!(reason.starts_with("rank 1"), "{reason}"),
        other => panic!("expected rank 1's failure, got {other:?}"),
    }
    // Collective deadline 0.3 s; rank 0 sleeps 10 s and the step deadline is 60 s.
    assert!(elapsed < Duration::from_secs(3), "the failure took {elapsed:?}");
}
