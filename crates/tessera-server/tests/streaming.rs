//! Streaming, n, request ids, readiness, metrics, and aborting on disconnect.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tessera_engine::{EngineOptions, FaultInjection, FaultKind};

/// The JSON payloads of an SSE body, and whether it ended with [DONE].
fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let done = data.last() == Some(&"[DONE]");
    (data.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect(), done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_and_completions_with_usage_and_n() {
    let server = start(tiny_config()).await;
    let http = client();
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 5, "n": 2, "stream": true,
                      "ignore_eos": true, "stream_options": {"include_usage": true}, "seed": 1});
    let text =
        http.post(server.url("/v1/completions")).json(&body).send().await.unwrap().text().await.unwrap();
    let (events, done) = sse_events(&text);
    assert!(done, "{text}");
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 10);
    let finishes: Vec<_> = events
        .iter()
        .flat_map(|e| e["choices"].as_array().unwrap().clone())
        .filter(|c| !c["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 2);
    assert!(finishes.iter().all(|c| c["finish_reason"] == "length"));

    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                      "stream": true, "ignore_eos": true, "logprobs": true, "top_logprobs": 2});
    let text =
        http.post(server.url("/v1/chat/completions")).json(&body).send().await.unwrap().text().await.unwrap();
    let (events, done) = sse_events(&text);
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content_chunks: Vec<_> = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"].is_string() && e["choices"][0]["logprobs"].is_object()
        })
        .collect();
    assert_eq!(content_chunks.len(), 4);
    assert_eq!(
        content_chunks[0]["choices"][0]["logprobs"]["content"][0]["top_logprobs"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_prefix_cache_hits_once_per_prompt() {
    let config = tiny_config();
    let block = config.cache.block_size;
    let server = start(config).await;
    let http = client();
    let prompt: Vec<u32> = (1..=40).collect();
    assert_ne!(prompt.len() % block, 0, "the test wants a partial last block");
    let hits = prompt.len() / block * block;
    let cached = |usage: &Value| usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() as usize;
    let post = |body: Value| {
        let (http, url) = (http.clone(), server.url("/v1/completions"));
        async move { http.post(url).json(&body).send().await.unwrap().text().await.unwrap() }
    };

    let first = json!({"model": "tiny", "prompt": prompt, "max_tokens": 2, "ignore_eos": true});
    let body: Value = serde_json::from_str(&post(first.clone()).await).unwrap();
    assert_eq!(cached(&body["usage"]), 0, "{body}");
    let body: Value = serde_json::from_str(&post(first).await).unwrap();
    assert_eq!(cached(&body["usage"]), hits, "{body}");

    // Streamed with n = 2: both choices find the prompt cached, but the prompt counts once, as
    // prompt_tokens does.
    let streamed = json!({"model": "tiny", "prompt": prompt, "max_tokens": 2, "ignore_eos": true, "n": 2,
                          "stream": true, "stream_options": {"include_usage": true}});
    let (events, done) = sse_events(&post(streamed).await);
    assert!(done);
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], prompt.len());
    assert_eq!(cached(usage), hits, "{usage}");

    // Two prompts, n = 2: choices 0 and 1 are of the new prompt, 2 and 3 of the cached one, so
    // the hits come from choice 2 (the cached prompt's first choice).
    let fresh: Vec<u32> = (101..=140).collect();
    let both =
        json!({"model": "tiny", "prompt": [fresh, prompt], "max_tokens": 2, "ignore_eos": true, "n": 2});
    let body: Value = serde_json::from_str(&post(both).await).unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 2 * prompt.len());
    assert_eq!(cached(&body["usage"]), hits, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_returned_and_propagated() {
    let server = start(tiny_config()).await;
    let response =
        client().get(server.url("/v1/models")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let response = client().get(server.url("/v1/models")).send().await.unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], "tiny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_the_request() {
    let server = start(tiny_config()).await;
    let body =
        json!({"model": "tiny", "prompt": "hello", "max_tokens": 200, "ignore_eos": true, "stream": true});
    let response = client().post(server.url("/v1/completions")).json(&body).send().await.unwrap();
    let mut bytes = response.bytes_stream();
    bytes.next().await.unwrap().unwrap();
    drop(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.state.engine.stats().await.unwrap();
        if stats.scheduler.num_aborted == 1 && stats.num_used_blocks == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the disconnect never aborted: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_request_finished_total{finish_reason=\"abort\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_is_not_ready() {
    let mut config = tiny_config();
    config.server.ready_max_step_age_ms = 300;
    config.engine.step_timeout_ms = 60_000;
    let fault = FaultInjection { rank: 0, at_step: 2, kind: FaultKind::Hang(Duration::from_secs(3)) };
    let server = start_with(config, EngineOptions { fault: Some(fault), ..Default::default() }).await;
    let http = client();
    assert_eq!(http.get(server.url("/ready")).send().await.unwrap().status(), 200, "idle engine is ready");
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 20});
    let request = tokio::spawn(http.post(server.url("/v1/completions")).json(&body).send());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ready = http.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "a step stuck for over a second must not be ready");
    assert_eq!(http.get(server.url("/health")).send().await.unwrap().status(), 200, "the process is alive");
    assert_eq!(request.await.unwrap().unwrap().status(), 200, "the request completes after the hang");
    assert_eq!(http.get(server.url("/ready")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_ones() {
    let mut server = start(tiny_config()).await;
    let http = client();
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 60, "ignore_eos": true});
    let in_flight: Vec<_> =
        (0..4).map(|_| tokio::spawn(http.post(server.url("/v1/completions")).json(&body).send())).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown();
    for request in in_flight {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["usage"]["completion_tokens"], 60);
    }
    server.handle.await.unwrap().unwrap();
}
