//! Bearer-token authentication for every route but `/health`. Keys are compared in constant time
//! and never logged.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Equal in time independent of where the first difference is (the length may still leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when `header` (`Authorization`) carries one of `keys`, or no keys are configured.
pub fn authorized(keys: &[String], header: Option<&[u8]>) -> bool {
    if keys.is_empty() {
        return true;
    }
    let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else { return false };
    // Compare against every key so the time does not tell which one matched.
    keys.iter().fold(false, |found, key| found | constant_time_eq(key.as_bytes(), token))
}

pub async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if request.uri().path() == "/health" || authorized(&state.config.api_keys, header) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_exactly() {
        let keys = vec!["sk-one".to_string(), "sk-two".to_string()];
        assert!(authorized(&keys, Some(b"Bearer sk-two")));
        assert!(!authorized(&keys, Some(b"Bearer sk-twO")));
        assert!(!authorized(&keys, Some(b"Bearer sk-tw")));
        assert!(!authorized(&keys, Some(b"sk-one")));
        assert!(!authorized(&keys, None));
        assert!(authorized(&[], None));
    }
}
