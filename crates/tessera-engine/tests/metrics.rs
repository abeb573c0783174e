//! The engine records its metrics through the `metrics` crate. This test binary installs a
//! recorder for the whole process (so it lives in its own file).

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tessera_engine::{Engine, Prompt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_move_the_counters_and_histograms() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let engine = Engine::start(tiny_config()).await.unwrap();
    let prompt = byte_prompt(1, 40);
    for _ in 0..3 {
        // The same prompt three times: the second and third hit the prefix cache.
        run(&engine, Prompt::Tokens(prompt.clone()), greedy(10)).await;
    }
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str| {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(_, _, _, value)| value)
            .collect::<Vec<_>>()
    };
    let counter = |name: &str| {
        find(name).iter().map(|v| if let DebugValue::Counter(c) = v { *c } else { 0 }).sum::<u64>()
    };
    let histogram_len = |name: &str| match find(name).first() {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("tessera_generation_tokens_total"), 30);
    assert_eq!(counter("tessera_prompt_tokens_total"), 120);
    assert_eq!(counter("tessera_request_finished_total"), 3);
    assert_eq!(histogram_len("tessera_time_to_first_token_seconds"), 3);
    assert_eq!(histogram_len("tessera_inter_token_latency_seconds"), 27);
    assert_eq!(histogram_len("tessera_e2e_request_latency_seconds"), 3);
    assert_eq!(counter("tessera_prefix_cache_queries_total"), 120);
    // 40 prompt tokens leave two full 16-token blocks to reuse, twice.
    assert_eq!(counter("tessera_prefix_cache_hits_total"), 64);
    assert!(!find("tessera_kv_cache_usage_ratio").is_empty());
}
