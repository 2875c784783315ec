//! `GET /admin/dashboard`: a live page for an operator watching a sale.
//!
//! The page itself holds no data; it asks for the operator token once (kept
//! in the tab's sessionStorage) and polls `/admin/dashboard/data` every
//! second. That answer is the snapshot the engine's sampler built at its
//! last tick ([`crate::dashboard`]): five minutes of one-second samples
//! (requests/s by outcome, purchase p99, stock left, pending intents, drain
//! rate, outbox backlog), the recent events with their start, end and
//! sell-out times, their cancellations, refunds and stock adjustments, and
//! the alerts that hold. Serving it reads no database and no Redis, however
//! many tabs poll. The invariant checker (which walks every buyer and wallet
//! of an event) runs only when the operator presses its button, through
//! `GET /admin/events/{id}/invariants`.

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
};

use super::extract::Operator;
use crate::{error::ErrorBody, state::AppState};

#[utoipa::path(
    get, path = "/admin/dashboard", operation_id = "dashboard_page", tag = "operator",
    responses((status = 200, description = "The page (no data; it asks for the operator token)", content_type = "text/html", body = String)),
)]
pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// The sampler's last snapshot, as JSON.
#[utoipa::path(
    get, path = "/admin/dashboard/data", operation_id = "dashboard_data", tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sampler's last snapshot: `{now_ms, instance, samples: [{at_ms, purchases, p99_ms, drained, channel_depth, outbox_backlog, outbox_lag_s, events: [{id, stock_left, pending, sold, cancelled, refunded, adjusted, paused}]}], events: [{id, name, price, stock_total, starts_at_ms, ends_at_ms, sold_out_at_ms}], alerts: [{name, detail}]}`", body = Object),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
    ),
)]
pub async fn data(State(app): State<AppState>, _: Operator) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        app.dashboard.snapshot().to_string(),
    )
}
