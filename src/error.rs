//! The one error type at the HTTP edge. Every error body is
//! `{"error": "<code>", "message": "<text>"}` plus named extra fields; 5xx
//! bodies never carry internals (those are logged once, in the request span).

use std::{borrow::Cow, time::Duration};

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::{db::DbError, redis::RedisError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 (syntax) or 422 (semantics) `invalid_request`.
    #[error("{message}")]
    Invalid { status: StatusCode, message: String },
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden")]
    Forbidden,
    #[error("{0}")]
    NotFound(&'static str),
    /// A business refusal: 409 with a code and extra fields.
    #[error("{code}")]
    Conflict {
        code: &'static str,
        message: String,
        extra: Map<String, Value>,
    },
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("body too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// The body did not arrive in time.
    #[error("request timeout")]
    RequestTimeout,
    /// Redis or Postgres unreachable: 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { status, .. } => *status,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error code and human message.
    fn code_and_message(&self) -> (&str, Cow<'_, str>) {
        match self {
            Self::Invalid { message, .. } => ("invalid_request", message.as_str().into()),
            Self::Unauthorized => (
                "unauthorized",
                "missing, invalid or expired credentials".into(),
            ),
            Self::Forbidden => ("forbidden", "not allowed".into()),
            Self::NotFound(what) => ("not_found", format!("{what} not found").into()),
            Self::Conflict { code, message, .. } => (code, message.as_str().into()),
            Self::IdempotencyKeyReused => (
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request".into(),
            ),
            Self::RateLimited { .. } => ("rate_limited", "too many requests; retry later".into()),
            Self::PayloadTooLarge => ("payload_too_large", "request body too large".into()),
            Self::UnsupportedMediaType => (
                "unsupported_media_type",
                "expected Content-Type: application/json".into(),
            ),
            Self::RequestTimeout => (
                "request_timeout",
                "the request body did not arrive in time".into(),
            ),
            Self::Unavailable(_) => (
                "unavailable",
                "a backing service is unavailable; retry later".into(),
            ),
            Self::Internal(_) => ("internal", "internal error".into()),
        }
    }

    /// The JSON body (also what an idempotent replay stores).
    pub fn body(&self) -> Value {
        let (code, message) = self.code_and_message();
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        body.insert("message".into(), json!(message));
        if let Self::Conflict { extra, .. } = self {
            body.extend(extra.clone());
        }
        Value::Object(body)
    }

    /// The body as bytes; the common case (no extra fields) without building a map.
    fn body_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Plain<'a> {
            error: &'a str,
            message: &'a str,
        }
        match self {
            Self::Conflict { extra, .. } if !extra.is_empty() => serde_json::to_vec(&self.body()),
            _ => {
                let (error, message) = self.code_and_message();
                serde_json::to_vec(&Plain {
                    error,
                    message: &message,
                })
            }
        }
        .expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_bytes(),
        )
            .into_response();
        if let Self::RateLimited { retry_after } = self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<RedisError> for ApiError {
    fn from(err: RedisError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

impl From<crate::reconciler::ReconcileError> for ApiError {
    fn from(err: crate::reconciler::ReconcileError) -> Self {
        match err {
            busy @ crate::reconciler::ReconcileError::Busy => {
                Self::conflict("reconciler_busy", busy.to_string())
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<crate::loading::LoadError> for ApiError {
    fn from(err: crate::loading::LoadError) -> Self {
        match err {
            crate::loading::LoadError::HasOrders => Self::conflict(
                "has_orders",
                "the event already has orders; preheat with ?force=true to rebuild it from Postgres",
            ),
            crate::loading::LoadError::Redis(err) => err.into(),
            crate::loading::LoadError::Db(err) => err.into(),
        }
    }
}

impl From<crate::invariants::CheckError> for ApiError {
    fn from(err: crate::invariants::CheckError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

impl From<crate::idempotency::StoreError> for ApiError {
    fn from(err: crate::idempotency::StoreError) -> Self {
        match err {
            crate::idempotency::StoreError::Redis(err) => err.into(),
            crate::idempotency::StoreError::Db(err) => err.into(),
            taken @ crate::idempotency::StoreError::Taken(_) => Self::Internal(taken.to_string()),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        match &err {
            DbError::Sqlx(sqlx::Error::Database(db)) if !err.is_transient() => {
                Self::Internal(db.to_string())
            }
            _ => Self::Unavailable(err.to_string()),
        }
    }
}
