//! tessera-client against a live `tessera-server` on loopback: plain and streamed requests,
//! cancellation (the server's metrics show the abort), and typed errors.

use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::{Client, ClientError};
use tessera_core::openai::{ChatCompletionRequest, CompletionRequest, TokenizeRequest};
use tessera_core::EngineConfig;
use tessera_engine::Engine;
use tessera_server::AppState;

async fn start(api_keys: Vec<String>) -> (String, Arc<AppState>) {
    let mut config = EngineConfig::default();
    config.cache.num_blocks = Some(256);
    config.model.max_model_len = Some(256);
    config.server.api_keys = api_keys;
    let engine = Engine::start(config.clone()).await.unwrap();
    let state = tessera_server::build_state(engine, config.server).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera_server::serve(listener, state.clone(), std::future::pending()));
    (url, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_and_streams() {
    let (url, _) = start(vec![]).await;
    let client = Client::new(&url).unwrap();
    client.health().await.unwrap();
    assert_eq!(client.models().await.unwrap().data[0].id, "tiny");

    let request = CompletionRequest::new("tiny", "Hello").max_tokens(6).temperature(0.0).ignore_eos(true);
    let response = client.completions(request.clone()).await.unwrap();
    assert_eq!(response.usage.unwrap().completion_tokens, 6);
    // Greedy: the streamed text is the same text.
    let mut stream = client.completions_stream(request).await.unwrap();
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        streamed.extend(chunk.unwrap().choices.into_iter().map(|c| c.text));
    }
    assert_eq!(streamed, response.choices[0].text);

    let chat = ChatCompletionRequest::new("tiny").user_message("hi").max_tokens(4).ignore_eos(true);
    let reply = client.chat(chat.clone()).await.unwrap();
    assert_eq!(reply.choices[0].finish_reason.as_deref(), Some("length"));
    let chunks: Vec<_> = client.chat_stream(chat).await.unwrap().collect().await;
    assert!(chunks.iter().all(Result::is_ok));
    assert!(chunks.iter().any(|c| c.as_ref().unwrap().choices.iter().any(|ch| ch.finish_reason.is_some())));

    let tokens =
        client.tokenize(&TokenizeRequest { prompt: "hi".into(), ..Default::default() }).await.unwrap();
    assert_eq!(tokens.count as usize, tokens.tokens.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_aborts_on_the_server() {
    let (url, state) = start(vec![]).await;
    let client = Client::new(&url).unwrap();
    let request = CompletionRequest::new("tiny", "Hello").max_tokens(200).ignore_eos(true);
    let mut stream = client.completions_stream(request).await.unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = state.engine.stats().await.unwrap();
        if stats.scheduler.num_aborted == 1 && stats.num_used_blocks == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no abort after the client dropped its stream: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_request_finished_total{finish_reason=\"abort\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let (url, _) = start(vec!["sk-test".into()]).await;
    let anonymous = Client::new(&url).unwrap();
    match anonymous.models().await {
        Err(ClientError::Api { status: 401, error, .. }) => assert_eq!(error.r#type, "authentication_error"),
        other => panic!("expected 401, got {other:?}"),
    }
    let client = Client::builder(&url).api_key("sk-test").timeout(Duration::from_secs(30)).build().unwrap();
    match client.completions(CompletionRequest::new("tiny", "x").top_p(2.0)).await {
        Err(ClientError::Api { status: 400, error, .. }) => assert_eq!(error.param.as_deref(), Some("top_p")),
        other => panic!("expected 400, got {other:?}"),
    }
    match client.completions(CompletionRequest::new("other-model", "x")).await {
        Err(ClientError::Api { status: 404, error, .. }) => {
            assert_eq!(error.code.as_deref(), Some("model_not_found"))
        }
        other => panic!("expected 404, got {other:?}"),
    }
    match client.chat_stream(ChatCompletionRequest::new("tiny").max_tokens(0)).await {
        Err(err) => assert_eq!(err.status(), Some(400)),
        Ok(_) => panic!("a bad streaming request must fail before streaming"),
    }
}
