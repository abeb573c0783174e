//! Probes and metrics: `/health` (the process answers), `/ready` (the engine can serve: healthy,
//! and idle or stepping; a hung engine is not ready), `/metrics` (Prometheus text).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::sync::Arc;

pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let health = state.engine.health();
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"})));
    }
    if health.is_ready(state.config.ready_max_step_age_ms) {
        return (StatusCode::OK, Json(json!({"status": "ready"})));
    }
    let reason = health.reason().unwrap_or_else(|| "engine busy without progress".into());
    let body = json!({"status": format!("{:?}", health.state()).to_lowercase(), "reason": reason});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
