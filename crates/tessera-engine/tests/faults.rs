//! Supervision: a worker that panics or hangs fails every in-flight request with an error, and
//! the engine then rebuilds its workers or stops, as configured.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tessera_core::config::OnWorkerFailure;
use tessera_core::EngineConfig;
use tessera_engine::{Engine, EngineError, EngineOptions, FaultInjection, FaultKind, HealthState, Prompt};

async fn start_faulty(policy: OnWorkerFailure, kind: FaultKind) -> Engine {
    let mut config: EngineConfig = tiny_config();
    config.parallel.tensor_parallel_size = 2;
    // A hang is found by these deadlines. A panic poisons the group at once, so its deadlines
    // are long: with short ones, a loaded machine (rank 1's thread not run for 300 ms) let rank
    // 0's collective time out before rank 1 reported its panic, and the panic's message was lost.
    let (collective, step) = match kind {
        FaultKind::Panic => (5_000, 10_000),
        _ => (300, 1_000),
    };
    config.parallel.collective_timeout_ms = collective;
    config.engine.step_timeout_ms = step;
    config.engine.on_worker_failure = policy;
    let fault = FaultInjection { rank: 1, at_step: 5, kind };
    Engine::start_with(config, EngineOptions { fault: Some(fault), ..Default::default() }).await.unwrap()
}

/// Starts eight long requests and returns how each ended.
async fn in_flight_outcomes(engine: &Engine) -> Vec<Outcome> {
    let runs = (0..8).map(|i| {
        let engine = engine.clone();
        tokio::spawn(async move { run(&engine, Prompt::Tokens(byte_prompt(i, 10)), greedy(200)).await })
    });
    futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect()
}

async fn wait_for(engine: &Engine, state: HealthState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.health().state() != state {
        assert!(Instant::now() < deadline, "engine never became {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_all_failed(outcomes: &[Outcome]) {
    for outcome in outcomes {
        match outcome.error() {
            Some(EngineError::WorkerFailed(reason)) => assert!(reason.contains("rank"), "{reason}"),
            other => {
                panic!("expected a worker failure, got {other:?} after {} tokens", outcome.token_ids.len())
            }
        }
        assert!(outcome.token_ids.len() < 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_fails_in_flight_requests_then_the_engine_recovers() {
    let engine = start_faulty(OnWorkerFailure::Restart, FaultKind::Panic).await;
    let start = Instant::now();
    let outcomes = in_flight_outcomes(&engine).await;
    assert_all_failed(&outcomes);
    assert!(start.elapsed() < Duration::from_secs(10), "errors took {:?}", start.elapsed());
    assert!(outcomes.iter().any(|o| o.error().unwrap().to_string().contains("injected fault")));

    wait_for(&engine, HealthState::Ready).await;
    let after = run(&engine, Prompt::Tokens(byte_prompt(99, 10)), greedy(20)).await;
    assert_eq!(after.token_ids.len(), 20, "after recovery: {:?}", after.terminal);
    assert_quiescent(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_with_exit_policy_stops_the_engine() {
    let engine = start_faulty(OnWorkerFailure::Exit, FaultKind::Panic).await;
    assert_all_failed(&in_flight_outcomes(&engine).await);
    wait_for(&engine, HealthState::Stopped).await;
    let err = engine
        .generate(tessera_engine::GenerateRequest::new(Prompt::Text("hi".into()), greedy(4)))
        .await
        .err()
        .expect("a stopped engine refuses requests");
    assert!(matches!(err, EngineError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("injected fault"), "the reason is reported: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rank_is_detected_by_the_collective_deadline() {
    let engine = start_faulty(OnWorkerFailure::Restart, FaultKind::Hang(Duration::from_secs(3))).await;
    let start = Instant::now();
    let outcomes = in_flight_outcomes(&engine).await;
    assert_all_failed(&outcomes);
    // Collective deadline 0.3 s, step deadline 1 s: well under the 3 s hang plus slack.
    assert!(start.elapsed() < Duration::from_secs(3), "detection took {:?}", start.elapsed());
    wait_for(&engine, HealthState::Ready).await;
}
