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

/// Every `error` code an error body can carry: the OpenAPI document's enum,
/// so a code cannot be sent that the contract does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400 (syntax: malformed JSON, path or query) or 422 (semantics).
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// 409: the stock is exhausted.
    SoldOut,
    /// 409: would exceed the per-shopper limit (`order_nos` lists the held orders).
    LimitExceeded,
    /// 409: before the start, after the end, or not preheated.
    NotActive,
    /// 409: the same Idempotency-Key is being answered right now.
    InProgress,
    /// 409: the operator paused the sale.
    SalePaused,
    /// 409: a PATCH with an `If-Match`/`version` that is not the event's
    /// current one (`version` carries the current).
    VersionConflict,
    /// 409: a field that cannot change once the sale has started (`field` names it).
    SaleStarted,
    /// 409: the sale has ended (lifecycle calls).
    SaleEnded,
    /// 409: a stock withdrawal beyond the unsold units (`stock_left` carries them).
    InsufficientStock,
    /// 409: the order is not persisted yet; retry in a moment.
    OrderPending,
    /// 409: the order failed and was never charged.
    OrderFailed,
    /// 409: the shopper's cancellation window has closed.
    CancelWindowClosed,
    /// 409: a preheat without `?force=true` of an event that has orders.
    HasOrders,
    /// 409: another engine process holds the reconciler lock.
    ReconcilerBusy,
    /// 422: an Idempotency-Key reused with a different request.
    IdempotencyKeyReused,
    RateLimited,
    PayloadTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    /// 503: Redis or Postgres unreachable, or shutting down.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SoldOut => "sold_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::NotActive => "not_active",
            Self::InProgress => "in_progress",
            Self::SalePaused => "sale_paused",
            Self::VersionConflict => "version_conflict",
            Self::SaleStarted => "sale_started",
            Self::SaleEnded => "sale_ended",
            Self::InsufficientStock => "insufficient_stock",
            Self::OrderPending => "order_pending",
            Self::OrderFailed => "order_failed",
            Self::CancelWindowClosed => "cancel_window_closed",
            Self::HasOrders => "has_orders",
            Self::ReconcilerBusy => "reconciler_busy",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// The JSON error body as the OpenAPI document describes it: what
/// [`ApiError`] renders (and the router's net for framework rejections).
#[derive(Debug, utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is rendered by ApiError::body")]
pub struct ErrorBody {
    error: ErrorCode,
    /// Human-readable; never internals.
    message: String,
    /// `limit_exceeded` only: the shopper's non-failed orders for the sale.
    order_nos: Option<Vec<uuid::Uuid>>,
    /// `version_conflict` only: the event's current version.
    version: Option<i64>,
    /// `sale_started` only: the field that can no longer change.
    field: Option<String>,
    /// `insufficient_stock` only: the units left unsold.
    stock_left: Option<i64>,
}

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
    #[error("{}", code.as_str())]
    Conflict {
        code: ErrorCode,
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

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
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
    fn code_and_message(&self) -> (ErrorCode, Cow<'_, str>) {
        match self {
            Self::Invalid { message, .. } => (ErrorCode::InvalidRequest, message.as_str().into()),
            Self::Unauthorized => (
                ErrorCode::Unauthorized,
                "missing, invalid or expired credentials".into(),
            ),
            Self::Forbidden => (ErrorCode::Forbidden, "not allowed".into()),
            Self::NotFound(what) => (ErrorCode::NotFound, format!("{what} not found").into()),
            Self::Conflict { code, message, .. } => (*code, message.as_str().into()),
            Self::IdempotencyKeyReused => (
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request".into(),
            ),
            Self::RateLimited { .. } => (
                ErrorCode::RateLimited,
                "too many requests; retry later".into(),
            ),
            Self::PayloadTooLarge => (ErrorCode::PayloadTooLarge, "request body too large".into()),
            Self::UnsupportedMediaType => (
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json".into(),
            ),
            Self::RequestTimeout => (
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time".into(),
            ),
            Self::Unavailable(_) => (
                ErrorCode::Unavailable,
                "a backing service is unavailable; retry later".into(),
            ),
            Self::Internal(_) => (ErrorCode::Internal, "internal error".into()),
        }
    }

    /// The JSON body (also what an idempotent replay stores).
    pub fn body(&self) -> Value {
        let (code, message) = self.code_and_message();
        let mut body = Map::new();
        body.insert("error".into(), json!(code.as_str()));
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
                    error: error.as_str(),
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
                Self::conflict(ErrorCode::ReconcilerBusy, busy.to_string())
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<crate::loading::LoadError> for ApiError {
    fn from(err: crate::loading::LoadError) -> Self {
        match err {
            crate::loading::LoadError::HasOrders => Self::conflict(
                ErrorCode::HasOrders,
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
