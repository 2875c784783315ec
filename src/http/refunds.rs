//! `POST /api/orders/{order_no}/cancel` (the shopper's own order, within the
//! event's cancellation window) and `POST /admin/orders/{order_no}/refund`
//! (an operator, any confirmed order, with a reason): see [`crate::refunds`].

use axum::{extract::State, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{AppJson, Operator, PathText, Shopper};
use crate::{
    error::ApiError,
    refunds::{self, RefundAnswer, RefundError, Requester},
    state::AppState,
};

impl From<RefundError> for ApiError {
    fn from(err: RefundError) -> Self {
        match err {
            RefundError::NotFound => ApiError::NotFound("order"),
            RefundError::Pending => ApiError::conflict(
                "order_pending",
                "the order is not persisted yet; retry in a moment",
            ),
            RefundError::Failed => ApiError::conflict(
                "order_failed",
                "the order failed and was never charged; nothing to refund",
            ),
            RefundError::WindowClosed(message) => {
                ApiError::conflict("cancel_window_closed", message)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    reason: String,
}

/// Longest reason kept on a refund or a ledger row.
pub const MAX_REASON_CHARS: usize = 500;

/// A trimmed reason of 1..=500 characters.
pub fn check_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::unprocessable(format!(
            "reason must be 1..={MAX_REASON_CHARS} characters"
        )));
    }
    Ok(reason)
}

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
