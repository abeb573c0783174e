//! `/v1/models`, `/tokenize`, `/detokenize`.

use crate::error::{ApiError, ApiJson};
use crate::state::{unix_now, AppState};
use axum::extract::State;
use axum::Json;
use std::sync::Arc;
use tessera_core::openai::{
    DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList, TokenizeRequest, TokenizeResponse,
    OBJECT_LIST, OBJECT_MODEL,
};

/// 404 unless `model` is the served one.
pub fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == state.model_name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model))
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: OBJECT_LIST.into(),
        data: vec![ModelCard {
            id: state.model_name.clone(),
            object: OBJECT_MODEL.into(),
            created: unix_now(),
            owned_by: "tessera".into(),
            max_model_len: Some(state.engine.max_model_len() as u32),
        }],
    })
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    if let Some(model) = &req.model {
        check_model(&state, model)?;
    }
    let tokens = state
        .engine
        .tokenizer()
        .encode(&req.prompt, req.add_special_tokens.unwrap_or(true))
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    Ok(Json(TokenizeResponse {
        count: tokens.len() as u32,
        tokens,
        max_model_len: state.engine.max_model_len() as u32,
    }))
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    if let Some(model) = &req.model {
        check_model(&state, model)?;
    }
    crate::params::check_token_ids("tokens", &req.tokens, state.engine.spec().vocab_size)?;
    let prompt = state
        .engine
        .tokenizer()
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
