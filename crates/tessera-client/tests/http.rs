//! The client against a canned in-process HTTP server: request shapes, responses, streams, errors.

mod support;

use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{serve, Reply};
use tessera_client::{
    ChatCompletionRequest, Client, ClientError, CompletionRequest, DetokenizeRequest, StreamOptions,
    TokenizeRequest, Usage,
};
use tokio::sync::mpsc;

fn completion_json() -> serde_json::Value {
    json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny",
           "choices": [{"index": 0, "text": " world", "logprobs": null, "finish_reason": "length"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
}

fn chat_chunk(content: &str, finish: Option<&str>) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

#[tokio::test]
async fn completions_sends_the_request_and_decodes_the_response() {
    let mut server = serve(|_| Reply::json(200, completion_json())).await;
    let client = Client::builder(format!("{}/v1/", server.url)).api_key("secret").build().unwrap();
    let request = CompletionRequest::new("tiny", "Hello").max_tokens(2).temperature(0.0).stream(true);
    let resp = client.completions(request).await.unwrap();
    assert_eq!(resp.choices[0].text, " world");
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(resp.usage, Some(Usage::new(1, 2)));

    let sent = server.request().await;
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/completions"));
    assert_eq!(sent.header("authorization"), Some("Bearer secret"));
    // The non-streaming call overrides the caller's `stream: true`.
    assert_eq!(sent.json(), json!({"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0.0}));
}

#[tokio::test]
async fn chat_stream_yields_every_chunk_across_split_events_until_done() {
    let role = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
        "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}});
    let body = format!(
        ": keep-alive\n\ndata: {role}\n\n{}{}data: {usage}\r\n\r\ndata: [DONE]\n\ndata: {{\"after\": 1}}\n\n",
        chat_chunk("Hé", None),
        chat_chunk("llo", Some("stop")),
    );
    // Pieces of 7 bytes: events and multi-byte characters split across HTTP chunks.
    let pieces: Vec<Vec<u8>> = body.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
    let mut server = serve(move |_| Reply::Sse(pieces.clone())).await;
    let client = Client::new(&server.url).unwrap();
    let request = ChatCompletionRequest::new("tiny")
        .user_message("hi")
        .stream_options(StreamOptions { include_usage: Some(true) });
    let chunks: Vec<_> = client.chat_stream(request).await.unwrap().collect().await;
    let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks.len(), 4, "the event after [DONE] is not read");
    let text: String =
        chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.delta.content.clone()).collect();
    assert_eq!(text, "Héllo");
    assert_eq!(chunks[2].choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(chunks[3].usage, Some(Usage::new(4, 2)));

    let sent = server.request().await;
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    let body = sent.json();
    assert_eq!(
        (body["stream"].clone(), body["stream_options"].clone()),
        (json!(true), json!({"include_usage": true}))
    );
}

#[tokio::test]
async fn completions_stream_without_done_ends_in_a_stream_error() {
    let chunk = json!({"id": "c", "object": "text_completion", "created": 1, "model": "tiny",
        "choices": [{"index": 0, "text": "a", "logprobs": null, "finish_reason": null}]});
    let piece = format!("data: {chunk}\n\n").into_bytes();
    let server = serve(move |_| Reply::Sse(vec![piece.clone()])).await;
    let client = Client::new(&server.url).unwrap();
    let mut stream = client.completions_stream(CompletionRequest::new("tiny", "x")).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().choices[0].text, "a");
    assert!(matches!(stream.next().await, Some(Err(ClientError::Stream(_)))));
    assert!(stream.next().await.is_none(), "the stream ends after its error");
}

#[tokio::test]
async fn an_error_event_mid_stream_is_an_api_error() {
    let pieces = vec![
        chat_chunk("a", None).into_bytes(),
        b"data: {\"error\": {\"message\": \"engine died\", \"type\": \"server_error\", \"code\": 500}}\n\n"
            .to_vec(),
    ];
    let server = serve(move |_| Reply::Sse(pieces.clone())).await;
    let client = Client::new(&server.url).unwrap();
    let items: Vec<_> = client.chat_stream(ChatCompletionRequest::new("m")).await.unwrap().collect().await;
    assert_eq!(items.len(), 2);
    let Err(ClientError::Api { status, error, .. }) = &items[1] else { panic!("{:?}", items[1]) };
    assert_eq!((*status, error.message.as_str(), error.code.as_deref()), (200, "engine died", Some("500")));
}

#[tokio::test]
async fn bad_request_maps_to_api_error_with_param() {
    let body = json!({"error": {"message": "temperature must be >= 0", "type": "invalid_request_error",
                                "param": "temperature", "code": null}});
    let server = serve(move |_| Reply::json(400, body.clone())).await;
    let client = Client::new(&server.url).unwrap();
    for err in [
        client.completions(CompletionRequest::new("m", "x").temperature(-1.0)).await.unwrap_err(),
        client.chat_stream(ChatCompletionRequest::new("m").temperature(-1.0)).await.unwrap_err(),
    ] {
        let ClientError::Api { status, error, retry_after } = &err else { panic!("{err:?}") };
        assert_eq!((*status, error.param.as_deref(), *retry_after), (400, Some("temperature"), None));
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn too_many_requests_exposes_retry_after() {
    let server = serve(|_| Reply::Full {
        status: 429,
        headers: vec![("Retry-After", "2".into()), ("Content-Type", "application/json".into())],
        body: br#"{"error": {"message": "server overloaded", "type": "rate_limit_error"}}"#.to_vec(),
    })
    .await;
    let err = Client::new(&server.url).unwrap().models().await.unwrap_err();
    assert_eq!((err.status(), err.retry_after()), (Some(429), Some(Duration::from_secs(2))));
    assert!(err.is_retryable());
    assert!(err.to_string().contains("server overloaded"), "{err}");
}

#[tokio::test]
async fn non_json_error_and_undecodable_success_bodies() {
    let server = serve(|r| match r.path.as_str() {
        "/health" => Reply::Full { status: 502, headers: vec![], body: b"<html>bad gateway</html>".to_vec() },
        _ => Reply::json(200, json!({"unexpected": true})),
    })
    .await;
    let client = Client::new(&server.url).unwrap();
    let err = client.health().await.unwrap_err();
    let ClientError::Api { status: 502, error, .. } = &err else { panic!("{err:?}") };
    assert_eq!((error.r#type.as_str(), error.message.as_str()), ("http_error", "<html>bad gateway</html>"));
    let err = client.models().await.unwrap_err();
    let ClientError::Decode { body, .. } = &err else { panic!("{err:?}") };
    assert!(body.contains("unexpected"));
}

#[tokio::test]
async fn a_stalled_response_times_out() {
    let server = serve(|_| Reply::Stall).await;
    let client = Client::builder(&server.url).timeout(Duration::from_millis(200)).build().unwrap();
    let start = Instant::now();
    let err = client.completions(CompletionRequest::new("m", "x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    let err = client.chat_stream(ChatCompletionRequest::new("m")).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

#[tokio::test]
async fn a_stream_that_goes_silent_hits_the_idle_timeout_but_not_the_call_timeout() {
    let pieces = vec![chat_chunk("a", None).into_bytes()];
    let server = serve(move |_| Reply::SseThenStall(pieces.clone())).await;
    let client = Client::builder(&server.url)
        .timeout(Duration::from_millis(100))
        .stream_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut stream = client.chat_stream(ChatCompletionRequest::new("m")).await.unwrap();
    let start = Instant::now();
    assert!(stream.next().await.unwrap().is_ok());
    assert!(matches!(stream.next().await, Some(Err(ClientError::Timeout))));
    // Past the 100 ms call timeout: that one bounds only the wait for the headers.
    assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn time_the_consumer_spends_between_polls_is_not_idle_time() {
    // The second event comes 500 ms after the first; the consumer waits 400 ms before asking for
    // it, so it waits only 100 ms of its 200 ms idle limit.
    let pieces = vec![
        (0, chat_chunk("a", None).into_bytes()),
        (500, chat_chunk("b", Some("stop")).into_bytes()),
        (0, b"data: [DONE]\n\n".to_vec()),
    ];
    let server = serve(move |_| Reply::SsePaced(pieces.clone())).await;
    let client =
        Client::builder(&server.url).stream_idle_timeout(Duration::from_millis(200)).build().unwrap();
    let mut stream = client.chat_stream(ChatCompletionRequest::new("m")).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(second.choices[0].delta.content.as_deref(), Some("b"));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn dropping_a_stream_closes_the_connection() {
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    let first = chat_chunk("a", None).into_bytes();
    let server = serve(move |_| Reply::SseUntilDisconnect(first.clone(), gone_tx.clone())).await;
    let client = Client::new(&server.url).unwrap();
    let mut stream = client.chat_stream(ChatCompletionRequest::new("m")).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    let seen = tokio::time::timeout(Duration::from_secs(5), gone_rx.recv()).await;
    assert_eq!(seen, Ok(Some(())), "the server saw the client go away");
}

#[tokio::test]
async fn models_tokenize_detokenize_and_health_use_their_paths() {
    let mut server = serve(|r| match r.path.as_str() {
        "/v1/models" => Reply::json(
            200,
            json!({"object": "list", "data": [
            {"id": "tiny", "object": "model", "created": 1, "owned_by": "tessera", "max_model_len": 64}]}),
        ),
        "/tokenize" => Reply::json(200, json!({"tokens": [1, 2], "count": 2, "max_model_len": 64})),
        "/detokenize" => Reply::json(200, json!({"prompt": "hi"})),
        "/health" => Reply::Full { status: 200, headers: vec![], body: Vec::new() },
        _ => Reply::json(404, json!({"error": {"message": "no route", "type": "not_found_error"}})),
    })
    .await;
    let client = Client::new(&server.url).unwrap();
    assert_eq!(client.models().await.unwrap().data[0].max_model_len, Some(64));
    assert_eq!(server.request().await.method, "GET");
    let tokenize = TokenizeRequest { model: None, prompt: "hi".into(), add_special_tokens: Some(false) };
    assert_eq!(client.tokenize(&tokenize).await.unwrap().tokens, vec![1, 2]);
    assert_eq!(server.request().await.json(), json!({"prompt": "hi", "add_special_tokens": false}));
    let detokenize = DetokenizeRequest { model: Some("tiny".into()), tokens: vec![1, 2] };
    assert_eq!(client.detokenize(&detokenize).await.unwrap().prompt, "hi");
    assert_eq!(server.request().await.path, "/detokenize");
    client.health().await.unwrap();
    assert_eq!(server.request().await.path, "/health");
}
