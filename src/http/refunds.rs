//! `POST /api/orders/{order_no}/cancel` (the shopper's own order, within the
//! event's cancellation window) and `POST /admin/orders/{order_no}/refund`
//! (an operator, any confirmed order, with a reason): see [`crate::refunds`].

use axum::{extract::State, Json};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{AppJson, Operator, PathText, Shopper};
use crate::{
    error::{ApiError, ErrorBody, ErrorCode},
    refunds::{self, RefundAnswer, RefundError, Requester},
    state::AppState,
};

impl From<RefundError> for ApiError {
    fn from(err: RefundError) -> Self {
        match err {
            RefundError::NotFound => ApiError::NotFound("order"),
            RefundError::Pending => ApiError::conflict(
                ErrorCode::OrderPending,
                "the order is not persisted yet; retry in a moment",
            ),
            RefundError::Failed => ApiError::conflict(
                ErrorCode::OrderFailed,
                "the order failed and was never charged; nothing to refund",
            ),
            RefundError::WindowClosed(message) => {
                ApiError::conflict(ErrorCode::CancelWindowClosed, message)
            }
            RefundError::Db(err) => err.into(),
            RefundError::Redis(err) => err.into(),
        }
    }
}

/// An order_no from the path; anything else names no order.
fn order_no(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound("order"))
}

/// The reason recorded for a shopper's own cancellation.
const SHOPPER_REASON: &str = "cancelled by the shopper";

#[utoipa::path(
    post, path = "/api/orders/{order_no}/cancel", operation_id = "cancel_order", tag = "shopper",
    security(("shopper_jwt" = [])),
    params(
        ("order_no" = String, Path, description = "The order number (anything not a UUID names no order: 404)"),
    ),
    responses(
        (status = 200, description = "Cancelled: money and units back (the same answer for every repeat)", body = RefundAnswer),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or someone else's", body = ErrorBody),
        (status = 409, description = "`order_pending`, `order_failed` or `cancel_window_closed`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the shopper's budget is spent", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(app): State<AppState>,
    Shopper(user_id): Shopper,
    PathText(raw): PathText,
) -> Result<Json<RefundAnswer>, ApiError> {
    let order_no = order_no(&raw)?;
    let answer = refunds::refund(
        &app.db,
        &app.redis,
        order_no,
        Requester::Shopper(user_id),
        SHOPPER_REASON,
    )
    .await?;
    app.catalog.clear_sold_out(answer.refund.event_id);
    Ok(Json(answer))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// 1..=500 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    reason: String,
}

/// Longest reason kept on a refund or a ledger row.
pub const MAX_REASON_CHARS: usize = 500;

/// A trimmed reason of 1..=500 characters, none of them a control
/// character (Postgres text cannot hold NUL; a reason is one line).
pub fn check_reason(reason: &str) -> Result<&str, ApiError> {
    let control = reason.chars().any(char::is_control);
    let reason = reason.trim();
    if control || reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::unprocessable(format!(
            "reason must be 1..={MAX_REASON_CHARS} characters, none of them a control character"
        )));
    }
    Ok(reason)
}

#[utoipa::path(
    post, path = "/admin/orders/{order_no}/refund", operation_id = "refund_order", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("order_no" = String, Path, description = "The order number (anything not a UUID names no order: 404)"),
    ),
    request_body(content = RefundBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Refunded: money and units back (the same answer for every repeat)", body = RefundAnswer),
        (status = 400, description = "`invalid_request`: malformed JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`order_pending` or `order_failed`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: reason empty or too long, not an object, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn refund(
    State(app): State<AppState>,
    _: Operator,
    PathText(raw): PathText,
    AppJson(body): AppJson<RefundBody>,
) -> Result<Json<RefundAnswer>, ApiError> {
    let reason = check_reason(&body.reason)?;
    let order_no = order_no(&raw)?;
    let answer =
        refunds::refund(&app.db, &app.redis, order_no, Requester::Operator, reason).await?;
    app.catalog.clear_sold_out(answer.refund.event_id);
    Ok(Json(answer))
}
