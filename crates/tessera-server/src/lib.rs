//! The OpenAI-compatible HTTP server.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both streaming or not),
//! `GET /v1/models`, `POST /tokenize`, `POST /detokenize`, `GET /health`, `GET /ready`,
//! `GET /metrics`. Every route but `/health` requires an API key when keys are configured.
//!
//! Architecture invariant: handlers only translate HTTP to `Engine` calls and back; all
//! scheduling, sampling and text work happens in the engine and its request streams.

mod auth;
mod chat;
pub mod chat_template;
mod completions;
mod error;
mod generation;
mod health;
mod models;
mod params;
mod request_id;
mod state;

pub use error::ApiError;
pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tessera_core::config::ServerConfig;
use tessera_engine::Engine;
use tokio::net::TcpListener;

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(%err, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .clone()
}

pub fn build_state(engine: Engine, config: ServerConfig) -> Result<Arc<AppState>, String> {
    let chat_template = chat_template::ChatTemplate::load(engine.config().model.path.as_deref())?;
    Ok(Arc::new(AppState {
        model_name: engine.model_name().to_string(),
        engine,
        config,
        chat_template,
        metrics: prometheus(),
        draining: Default::default(),
    }))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models::list))
        .route("/tokenize", post(models::tokenize))
        .route("/detokenize", post(models::detokenize))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::bad_request("unknown route") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_api_key))
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// Sets TCP_NODELAY on every accepted connection. Streaming writes small chunks; with Nagle's
/// algorithm on, a chunk written while the previous segment is unacknowledged waits for the ACK,
/// which a client delays by up to 40 ms on a kept-alive connection. That held every stream's first
/// token back by ~40 ms (the headers go out first), so TTFT looked 40 ms worse than the engine.
fn no_delay(listener: TcpListener) -> impl Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "could not set TCP_NODELAY on a connection");
        }
    })
}

/// Serves until `shutdown` resolves, then drains: `/ready` turns 503, new generation requests are
/// refused, and in-flight ones get `shutdown_timeout_ms` to finish. Returns once drained (or the
/// timeout passed) and the engine is stopped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_started = Arc::new(tokio::sync::Notify::new());
    let (notify, draining_state) = (drain_started.clone(), state.clone());
    let app = router(state.clone());
    let server = axum::serve(no_delay(listener), app).with_graceful_shutdown(async move {
        shutdown.await;
        draining_state.draining.store(true, Ordering::Release);
        tracing::info!("draining: no new requests; waiting for in-flight ones");
        notify.notify_one();
    });
    let timeout = Duration::from_millis(state.config.shutdown_timeout_ms);
    let deadline = async move {
        drain_started.notified().await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        result = server => result?,
        _ = deadline => tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown timeout: exiting with requests in flight"),
    }
    state.engine.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_on_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = no_delay(listener);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        // Without the tap a fresh socket has Nagle on (nodelay false): the client side shows it.
        assert!(!client.nodelay().unwrap());
        assert!(accepted.nodelay().unwrap());
    }
}
