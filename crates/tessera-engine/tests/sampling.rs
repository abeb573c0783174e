//! Sampling and text through the engine: seeds, stop strings, stop token ids, UTF-8 streaming.

mod common;

use common::*;
use tessera_core::{FinishReason, SamplingParams};
use tessera_engine::{Engine, EngineError, GenerateRequest, Prompt};

fn sampled(seed: Option<u64>) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed,
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_output_even_in_different_batches() {
    let engine = Engine::start(tiny_config()).await.unwrap();
    let prompt = || Prompt::Text("Once upon a time".into());
    let alone = run(&engine, prompt(), sampled(Some(42))).await.token_ids;
    // The same request again, now batched with others.
    let runs = (0..6).map(|i| {
        let engine = engine.clone();
        let seed = if i == 3 { Some(42) } else { Some(1000 + i) };
        tokio::spawn(
            async move { run(&engine, Prompt::Text("Once upon a time".into()), sampled(seed)).await },
        )
    });
    let batched: Vec<_> =
        futures_util::future::join_all(runs).await.into_iter().map(|o| o.unwrap().token_ids).collect();
    assert_eq!(batched[3], alone);
    let other = run(&engine, prompt(), sampled(Some(43))).await.token_ids;
    assert_ne!(other, alone, "a different seed should give a different sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_string_ends_the_request_and_is_not_emitted() {
    let engine = Engine::start(fixture_config("llama")).await.unwrap();
    let prompt = || Prompt::Text("The quick brown fox".into());
    let full = run(&engine, prompt(), greedy(32)).await;
    // Pick a stop string from the middle of the greedy text.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let params = SamplingParams { stop: vec![stop.clone()], ..greedy(32) };
    let stopped = run(&engine, prompt(), params).await;
    assert_eq!(stopped.reason(), Some(FinishReason::Stop));
    assert_eq!(stopped.text, full.text[..cut], "stop string {stop:?}");
    assert!(stopped.token_ids.len() < full.token_ids.len());
    assert_quiescent(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_token_id_ends_the_request_with_the_token() {
    let engine = Engine::start(fixture_config("qwen2")).await.unwrap();
    let prompt = || Prompt::Text("Hello there".into());
    let full = run(&engine, prompt(), greedy(20)).await;
    let stop_token = full.token_ids[5];
    let first = full.token_ids.iter().position(|&t| t == stop_token).unwrap();
    let params = SamplingParams { stop_token_ids: vec![stop_token], ..greedy(20) };
    let stopped = run(&engine, prompt(), params).await;
    assert_eq!(stopped.reason(), Some(FinishReason::Stop));
    assert_eq!(stopped.token_ids, full.token_ids[..=first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_is_the_decoded_text() {
    for (config, prompt) in
        [(fixture_config("llama"), "日本語と emoji 🦀 text"), (tiny_config(), "bytes: é 世界 🦀")]
    {
        let engine = Engine::start(config).await.unwrap();
        let params = SamplingParams { seed: Some(5), ..sampled(None) };
        let outcome =
            run(&engine, Prompt::Text(prompt.into()), SamplingParams { max_tokens: 64, ..params }).await;
        let decoded = engine.tokenizer().decode(&outcome.token_ids, true).unwrap();
        assert_eq!(outcome.text, decoded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let engine = Engine::start(tiny_config()).await.unwrap();
    let cases: Vec<(Prompt, SamplingParams, &str)> = vec![
        (Prompt::Tokens(vec![1, 99_999]), greedy(4), "outside the vocabulary"),
        (Prompt::Tokens(vec![]), greedy(4), "empty prompt"),
        (Prompt::Text("x".into()), SamplingParams { temperature: -1.0, ..greedy(4) }, "temperature"),
        (Prompt::Tokens(vec![1; 5000]), greedy(4), "max_model_len"),
    ];
    for (prompt, params, needle) in cases {
        let err = engine.generate(GenerateRequest::new(prompt, params)).await.err().expect("refused");
        assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
    }
    let ok = run(&engine, Prompt::Text("fine".into()), greedy(3)).await;
    assert_eq!(ok.token_ids.len(), 3);
    assert_quiescent(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_with_overloaded() {
    let mut config = tiny_config();
    config.scheduler.max_waiting_requests = 2;
    let engine = Engine::start(config).await.unwrap();
    let mut streams = Vec::new();
    let mut overloaded = 0;
    for i in 0..50 {
        match engine.generate(GenerateRequest::new(Prompt::Tokens(byte_prompt(i, 8)), greedy(50))).await {
            Ok(stream) => streams.push(stream),
            Err(EngineError::Overloaded { .. }) => overloaded += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(overloaded > 0, "50 requests into a queue of 2 should overflow");
    for stream in streams {
        assert_eq!(drain(stream).await.token_ids.len(), 50);
    }
}
