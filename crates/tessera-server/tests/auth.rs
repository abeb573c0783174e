//! With API keys configured, every route but /health refuses a missing or wrong key.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_needs_a_key() {
    let mut config = tiny_config();
    config.server.api_keys = vec!["sk-right".into(), "sk-other".into()];
    let server = start(config).await;
    let routes: Vec<(Method, &str, serde_json::Value)> = vec![
        (Method::POST, "/v1/completions", json!({"model": "tiny", "prompt": "hi", "max_tokens": 2})),
        (
            Method::POST,
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        ),
        (Method::GET, "/v1/models", json!(null)),
        (Method::POST, "/tokenize", json!({"prompt": "hi"})),
        (Method::POST, "/detokenize", json!({"tokens": [104, 105]})),
        (Method::GET, "/ready", json!(null)),
        (Method::GET, "/metrics", json!(null)),
        (Method::GET, "/no/such/route", json!(null)),
    ];
    let http = client();
    for (method, path, body) in &routes {
        let request = |key: Option<&str>| {
            let mut builder = http.request(method.clone(), server.url(path));
            if !body.is_null() {
                builder = builder.json(body);
            }
            if let Some(key) = key {
                builder = builder.bearer_auth(key);
            }
            builder.send()
        };
        for key in [None, Some("sk-wrong"), Some("sk-righ"), Some("sk-right-and-more")] {
            let response = request(key).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "authentication_error");
        }
        let response = request(Some("sk-other")).await.unwrap();
        assert_ne!(response.status(), 401, "{method} {path} with the right key");
    }
    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/health needs no key");
}
