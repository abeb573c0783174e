//! `Client` and its builder: one method per endpoint.

use crate::error::ClientError;
use crate::sse::EventStream;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;
use tessera_core::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionChunk, CompletionRequest,
    CompletionResponse, DetokenizeRequest, DetokenizeResponse, ModelList, TokenizeRequest, TokenizeResponse,
};

/// A client for one server. Cheap to clone (clones share the connection pool).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// Without a trailing `/` or `/v1`; endpoints add their own path.
    base_url: String,
    timeout: Option<Duration>,
    stream_idle_timeout: Option<Duration>,
}

/// Settings for a `Client`; see `Client::builder`.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    stream_idle_timeout: Option<Duration>,
}

impl ClientBuilder {
    /// Sent as `Authorization: Bearer <key>`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Limit on a whole call; for a streaming call, on the time until the response headers arrive
    /// (a stream may rightly run for minutes: bound it with `stream_idle_timeout`). Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Limit on establishing the TCP connection. Default: none.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Limit on the gap between two reads of a stream's body; a server that sends SSE comments as
    /// keep-alives resets it. Default: none.
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = Some(timeout);
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| ClientError::Config("api key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder().default_headers(headers);
        if let Some(t) = self.connect_timeout {
            http = http.connect_timeout(t);
        }
        Ok(Client {
            http: http.build().map_err(ClientError::Http)?,
            base_url: normalize_base_url(&self.base_url),
            timeout: self.timeout,
            stream_idle_timeout: self.stream_idle_timeout,
        })
    }
}

/// Accepts `http://host:port`, with or without a trailing `/` or `/v1` (OpenAI SDKs are configured
/// with the `/v1` form), since `/tokenize` and `/health` live outside `/v1`.
fn normalize_base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v1").unwrap_or(url).to_string()
}

impl Client {
    /// Starts configuring a client for the server at `base_url`, e.g. `http://127.0.0.1:8000`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            timeout: None,
            connect_timeout: None,
            stream_idle_timeout: None,
        }
    }

    /// A client with default settings.
    pub fn new(base_url: impl Into<String>) -> Result<Client, ClientError> {
        Self::builder(base_url).build()
    }

    /// The base URL requests go to (normalized: no trailing `/` or `/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /v1/completions`. Any `stream` setting in `request` is overridden.
    pub async fn completions(
        &self,
        mut request: CompletionRequest,
    ) -> Result<CompletionResponse, ClientError> {
        (request.stream, request.stream_options) = (None, None);
        self.call(Method::POST, "/v1/completions", Some(&request)).await
    }

    /// `POST /v1/completions` with `stream: true`. Resolves once the response headers have
    /// arrived (so a rejected request fails here), then yields chunks. Keeps `stream_options`.
    pub async fn completions_stream(
        &self,
        mut request: CompletionRequest,
    ) -> Result<EventStream<CompletionChunk>, ClientError> {
        request.stream = Some(true);
        self.stream("/v1/completions", &request).await
    }

    /// `POST /v1/chat/completions`. Any `stream` setting in `request` is overridden.
    pub async fn chat(
        &self,
        mut request: ChatCompletionRequest,
    ) -> Result<ChatCompletionResponse, ClientError> {
        (request.stream, request.stream_options) = (None, None);
        self.call(Method::POST, "/v1/chat/completions", Some(&request)).await
    }

    /// `POST /v1/chat/completions` with `stream: true`; see `completions_stream`.
    pub async fn chat_stream(
        &self,
        mut request: ChatCompletionRequest,
    ) -> Result<EventStream<ChatCompletionChunk>, ClientError> {
        request.stream = Some(true);
        self.stream("/v1/chat/completions", &request).await
    }

    /// `GET /v1/models`.
    pub async fn models(&self) -> Result<ModelList, ClientError> {
        self.call(Method::GET, "/v1/models", None::<&()>).await
    }

    /// `POST /tokenize` (vLLM's endpoint).
    pub async fn tokenize(&self, request: &TokenizeRequest) -> Result<TokenizeResponse, ClientError> {
        self.call(Method::POST, "/tokenize", Some(request)).await
    }

    /// `POST /detokenize` (vLLM's endpoint).
    pub async fn detokenize(&self, request: &DetokenizeRequest) -> Result<DetokenizeResponse, ClientError> {
        self.call(Method::POST, "/detokenize", Some(request)).await
    }

    /// `GET /health`: `Ok` when the server answers 2xx (it is up and its engine is serving).
    pub async fn health(&self) -> Result<(), ClientError> {
        self.with_timeout(async {
            self.send(self.request(Method::GET, "/health")).await?;
            Ok(())
        })
        .await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base_url))
    }

    /// One JSON call: send, check the status, read and decode the body, all under `timeout`.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut request = self.request(method, path).header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        self.with_timeout(async {
            let bytes = self.send(request).await?.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::decode(e, &bytes))
        })
        .await
    }

    async fn stream<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<EventStream<T>, ClientError> {
        let request = self.request(Method::POST, path).header(ACCEPT, "text/event-stream").json(body);
        let response = self.with_timeout(self.send(request)).await?;
        Ok(EventStream::new(response, self.stream_idle_timeout))
    }

    /// Sends and turns a non-2xx answer into `ClientError::Api`.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Err(ClientError::from_error_response(status.as_u16(), &headers, &body))
    }

    async fn with_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| ClientError::Timeout)?,
            None => call.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_drops_trailing_slash_and_v1() {
        for url in ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"] {
            assert_eq!(normalize_base_url(url), "http://h:1", "{url}");
        }
        assert_eq!(normalize_base_url("http://h:1/proxy/"), "http://h:1/proxy");
    }

    #[test]
    fn api_key_must_be_a_header_value() {
        let err = Client::builder("http://h:1").api_key("bad\nkey").build().unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err:?}");
        let client = Client::builder("http://h:1/v1/").api_key("k").build().unwrap();
        assert_eq!(client.base_url(), "http://h:1");
    }
}
