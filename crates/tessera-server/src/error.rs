//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status that OpenAI clients expect.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_core::openai::{ErrorBody, ErrorResponse};
use tessera_engine::EngineError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        let body = ErrorBody { message: message.into(), r#type: kind.into(), param: None, code: None };
        ApiError { status, body, retry_after_s: None }
    }

    /// 400 naming the request parameter at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        err.body.param = Some(param.into());
        err
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut err = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist."),
        );
        err.body.param = Some("model".into());
        err.body.code = Some("model_not_found".into());
        err
    }

    pub fn unauthorized() -> Self {
        let mut err =
            Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "Missing or invalid API key.");
        err.body.code = Some("invalid_api_key".into());
        err
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message);
        err.retry_after_s = Some(1);
        err
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn to_response_body(&self) -> ErrorResponse {
        ErrorResponse { error: self.body.clone() }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Overloaded { .. } => {
                let mut api = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", err.to_string());
                api.body.code = Some("overloaded".into());
                api.retry_after_s = Some(1);
                api
            }
            EngineError::InvalidRequest(message) => Self::bad_request(message),
            EngineError::Unavailable(message) => Self::unavailable(message),
            EngineError::WorkerFailed(_) | EngineError::Startup(_) => Self::internal(err.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.to_response_body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `axum::Json`, with rejections (bad JSON, too large, wrong content type) in OpenAI's shape.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                // axum says 422 for well-formed JSON of the wrong shape; OpenAI says 400.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "request_too_large"
                } else {
                    "invalid_request_error"
                };
                Err(ApiError::new(status, kind, rejection.body_text()))
            }
        }
    }
}
