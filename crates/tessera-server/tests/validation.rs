//! Every bad input gets OpenAI's error shape with the right status and `param`, and changes
//! nothing: a valid request afterwards still succeeds.

mod common;

use common::*;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    param: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let completion = |extra: Value| {
        let mut body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 4});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let chat = |extra: Value| {
        let mut body =
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let c = |name, body, status, param| Case { name, path: "/v1/completions", body, status, param };
    let ch = |name, body, status, param| Case { name, path: "/v1/chat/completions", body, status, param };
    vec![
        c("negative temperature", completion(json!({"temperature": -0.5})), 400, Some("temperature")),
        c("NaN temperature", completion(json!({"temperature": "NaN"})), 400, None),
        c("top_p zero", completion(json!({"top_p": 0.0})), 400, Some("top_p")),
        c("top_p above one", completion(json!({"top_p": 1.01})), 400, Some("top_p")),
        c("n zero", completion(json!({"n": 0})), 400, Some("n")),
        c("n too large", completion(json!({"n": 1000})), 400, Some("n")),
        c("max_tokens zero", completion(json!({"max_tokens": 0})), 400, Some("max_tokens")),
        c("max_tokens beyond context", completion(json!({"max_tokens": 100000})), 400, Some("max_tokens")),
        c(
            "prompt token out of vocabulary",
            completion(json!({"prompt": [1, 2, 999999]})),
            400,
            Some("prompt"),
        ),
        c(
            "batch token out of vocabulary",
            completion(json!({"prompt": [[1], [70000]]})),
            400,
            Some("prompt"),
        ),
        c(
            "stop token out of vocabulary",
            completion(json!({"stop_token_ids": [600]})),
            400,
            Some("stop_token_ids"),
        ),
        c("prompt longer than context", completion(json!({"prompt": vec![65u32; 300]})), 400, Some("prompt")),
        c("empty prompt list", completion(json!({"prompt": []})), 400, Some("prompt")),
        c("empty token batch", completion(json!({"prompt": [[]]})), 400, Some("prompt")),
        c("unknown model", completion(json!({"model": "gpt-4"})), 404, Some("model")),
        c("malformed JSON body", json!("not an object"), 400, None),
        ch("chat negative temperature", chat(json!({"temperature": -1})), 400, Some("temperature")),
        ch(
            "chat top_logprobs too many",
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            400,
            Some("top_logprobs"),
        ),
        ch("chat no messages", chat(json!({"messages": []})), 400, Some("messages")),
        ch("chat unknown model", chat(json!({"model": "nope"})), 404, Some("model")),
        ch(
            "chat max_completion_tokens beyond context",
            chat(json!({"max_completion_tokens": 10000})),
            400,
            Some("max_tokens"),
        ),
        Case {
            name: "detokenize out of vocabulary",
            path: "/detokenize",
            body: json!({"tokens": [1, 100000]}),
            status: 400,
            param: Some("tokens"),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_in_openai_shape() {
    let server = start(tiny_config()).await;
    let http = client();
    for case in cases() {
        let response = http.post(server.url(case.path)).json(&case.body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {body}", case.name);
        assert!(error["type"].is_string(), "{}: {body}", case.name);
        assert!(error.get("code").is_some() && error.get("param").is_some(), "{}: {body}", case.name);
        if let Some(param) = case.param {
            assert_eq!(error["param"], param, "{}: {body}", case.name);
        }
    }
    let ok = http
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "tiny", "prompt": "hello", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let stats = server.state.engine.stats().await.unwrap();
    assert_eq!(stats.num_used_blocks, 0, "refused requests left state behind: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_too_large_is_413() {
    let mut config = tiny_config();
    config.server.max_body_bytes = 2048;
    let server = start(config).await;
    let body = json!({"model": "tiny", "prompt": "x".repeat(5000)});
    let response = client().post(server.url("/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_with_retry_after() {
    let mut config = tiny_config();
    config.scheduler.max_waiting_requests = 1;
    config.scheduler.max_num_seqs = 1;
    config.scheduler.max_num_batched_tokens = 64;
    let server = start(config).await;
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 100, "ignore_eos": true});
    let sends = (0..12).map(|_| client().post(server.url("/v1/completions")).json(&body).send());
    let responses = futures_util::future::join_all(sends).await;
    let limited: Vec<_> =
        responses.iter().map(|r| r.as_ref().unwrap()).filter(|r| r.status() == 429).collect();
    assert!(!limited.is_empty(), "12 requests into a queue of 1 should overflow");
    for response in limited {
        assert_eq!(response.headers()["retry-after"], "1");
    }
    assert!(responses.iter().any(|r| r.as_ref().unwrap().status() == 200));
}
