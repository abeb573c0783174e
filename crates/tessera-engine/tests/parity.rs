//! Through the whole engine, TP=1, 2 and 4 on the CPU give transformers' greedy tokens for every
//! fixture architecture, with all prompts running concurrently in one batch.

mod common;

use common::*;
use serde_json::Value;
use tessera_engine::{Engine, Prompt};

fn expected(name: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    json["cases"].as_array().unwrap().iter().map(|c| (ids(&c["prompt_ids"]), ids(&c["greedy_ids"]))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_parallel_engines_match_transformers() {
    for name in ["llama", "qwen2", "qwen3", "mistral"] {
        let cases = expected(name);
        for tp in [1, 2, 4] {
            let mut config = fixture_config(name);
            config.parallel.tensor_parallel_size = tp;
            let engine = Engine::start(config).await.unwrap();
            let runs = cases.iter().map(|(prompt, want)| {
                let engine = engine.clone();
                let (prompt, n) = (prompt.clone(), want.len() as u32);
                tokio::spawn(async move { run(&engine, Prompt::Tokens(prompt), greedy(n)).await })
            });
            let outcomes: Vec<Outcome> =
                futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
            for (i, (outcome, (_, want))) in outcomes.iter().zip(&cases).enumerate() {
                assert_eq!(&outcome.token_ids, want, "{name} TP={tp} case {i}");
            }
            assert_quiescent(&engine).await;
            engine.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_parallel_size_that_does_not_divide_kv_heads_is_refused() {
    let mut config = fixture_config("llama");
    config.parallel.tensor_parallel_size = 3;
    let err = Engine::start(config).await.err().expect("TP=3 cannot split 4 KV heads");
    assert!(err.to_string().contains("tensor_parallel_size = 3 must divide"), "{err}");
}
