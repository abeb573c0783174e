//! `ClientError`: every way a call can fail, typed so callers can retry, back off or report.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;
use tessera_core::openai::{ErrorBody, ErrorResponse};

/// How much of an undecodable body an error keeps, so a huge HTML page does not end up in logs.
const BODY_SNIPPET_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status (or sent an error event mid-stream, with the
    /// stream's status, 200). `error` is the OpenAI error body; a body not in that shape becomes
    /// `type: "http_error"` with the body's start as the message.
    #[error("server returned {status}: {error}")]
    Api {
        status: u16,
        error: ErrorBody,
        /// From the `Retry-After` header (seconds form), sent with 429 and 503.
        retry_after: Option<Duration>,
    },
    /// The configured timeout (whole call, time to response headers for a stream, or the gap
    /// between stream events) ran out.
    #[error("request timed out")]
    Timeout,
    /// Connection or protocol failure below the API: refused, reset, bad URL, TLS.
    #[error("http error: {0}")]
    Http(#[source] reqwest::Error),
    /// A 2xx body (or stream event) that is not the expected JSON.
    #[error("could not decode response: {source}; body starts: {body}")]
    Decode {
        #[source]
        source: serde_json::Error,
        body: String,
    },
    /// The event stream broke its framing: it ended without `data: [DONE]`, or sent an event
    /// too large or not UTF-8.
    #[error("event stream error: {0}")]
    Stream(String),
    /// The client was built with a bad setting (an API key that is not a valid header value).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status of an `Api` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the server asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth retrying unchanged: overload (429, 503), other server errors, timeouts, connection
    /// failures. A 4xx other than 429 is the request's fault and will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            ClientError::Timeout | ClientError::Http(_) => true,
            ClientError::Decode { .. } | ClientError::Stream(_) | ClientError::Config(_) => false,
        }
    }

    pub(crate) fn decode(source: serde_json::Error, body: &[u8]) -> Self {
        ClientError::Decode { source, body: snippet(body) }
    }

    /// An error response: the OpenAI error body if it is one, else the body's start.
    pub(crate) fn from_error_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let error = match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(parsed) => parsed.error,
            Err(_) => ErrorBody {
                message: snippet(body),
                r#type: "http_error".to_string(),
                param: None,
                code: Some(status.to_string()),
            },
        };
        ClientError::Api { status, error, retry_after: retry_after(headers) }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ClientError::Timeout
        } else {
            ClientError::Http(e)
        }
    }
}

/// `Retry-After` in its delay-seconds form. The HTTP-date form is rare from API servers and would
/// need a clock and a date parser; it reads as `None`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

fn snippet(body: &[u8]) -> String {
    let end = body.len().min(BODY_SNIPPET_BYTES);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn error_responses_keep_the_openai_body_or_the_body_start() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        let body = br#"{"error": {"message": "slow down", "type": "rate_limit_error", "param": null}}"#;
        let e = ClientError::from_error_response(429, &headers, body);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.status(), Some(429));
        assert!(e.is_retryable());
        assert!(matches!(&e, ClientError::Api { error, .. } if error.r#type == "rate_limit_error"));

        let html = "<html>".repeat(200);
        let e = ClientError::from_error_response(400, &HeaderMap::new(), html.as_bytes());
        let ClientError::Api { error, retry_after, .. } = &e else { panic!("{e:?}") };
        assert_eq!((error.r#type.as_str(), error.message.len()), ("http_error", BODY_SNIPPET_BYTES));
        assert_eq!(*retry_after, None);
        assert!(!e.is_retryable());
    }

    #[test]
    fn http_date_retry_after_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None);
    }
}
