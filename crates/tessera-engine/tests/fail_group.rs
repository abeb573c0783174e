//! `Engine::fail_workers_if`: a group known to be broken outside a step (a lost node of a
//! multi-node group) fails when the check still says so, and is left alone when it does not.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tessera_core::FinishReason;
use tessera_engine::{Engine, EngineError, HealthState, Prompt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_fails_in_flight_requests_and_is_rebuilt() {
    let mut config = tiny_config();
    config.parallel.tensor_parallel_size = 2;
    let engine = Engine::start(config).await.unwrap();
    let request = {
        let engine = engine.clone();
        tokio::spawn(async move { run(&engine, Prompt::Tokens(byte_prompt(1, 8)), greedy(400)).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.stats().await.unwrap().scheduler.num_running == 0 {
        assert!(std::time::Instant::now() < deadline, "the request never started");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let checked = Arc::new(AtomicBool::new(false));
    let seen = checked.clone();
    engine.fail_workers_if("node 2 lost: test".into(), move || {
        seen.store(true, Ordering::SeqCst);
        true
    });
    let outcome = request.await.unwrap();
    match outcome.error() {
        Some(EngineError::WorkerFailed(reason)) => assert!(reason.contains("node 2 lost"), "{reason}"),
        other => panic!("expected the group failure, got {other:?}"),
    }
    assert!(checked.load(Ordering::SeqCst));
    // Rebuilt (requests are refused while it is): the next request runs to its end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.health().state() != HealthState::Ready {
        assert!(std::time::Instant::now() < deadline, "the group was not rebuilt");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let outcome = run(&engine, Prompt::Tokens(byte_prompt(2, 8)), greedy(4)).await;
    assert_eq!(outcome.reason(), Some(FinishReason::Length));
    assert_quiescent(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_failure_changes_nothing() {
    let engine = Engine::start(tiny_config()).await.unwrap();
    let request = {
        let engine = engine.clone();
        tokio::spawn(async move { run(&engine, Prompt::Tokens(byte_prompt(3, 8)), greedy(50)).await })
    };
    engine.fail_workers_if("already rebuilt".into(), || false);
    assert_eq!(request.await.unwrap().reason(), Some(FinishReason::Length));
}
