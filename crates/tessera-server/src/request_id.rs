//! Every request gets an id (the client's `x-request-id`, or a new one): it is the request's
//! tracing span field and comes back in the `x-request-id` response header.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(rand::random);
    format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The id a client sent, if it is printable and short; anything else is replaced.
fn client_id(request: &Request) -> Option<String> {
    let value = request.headers().get(HEADER)?.to_str().ok()?;
    (!value.is_empty() && value.len() <= 128 && value.chars().all(|c| c.is_ascii_graphic()))
        .then(|| value.to_string())
}

pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = client_id(&request).unwrap_or_else(new_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = async move {
        let response = next.run(request).await;
        tracing::info!(status = response.status().as_u16(), "done");
        response
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// The request's id, for handlers that put it in response ids.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);
