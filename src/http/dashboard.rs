//! `GET /admin/dashboard`: a live page for an operator watching a sale.
//!
//! The page itself holds no data; it asks for the operator token once (kept
//! in the tab's sessionStorage) and polls `/admin/dashboard/data` every
//! second. That answer is the snapshot the engine's sampler built at its
//! last tick ([`crate::dashboard`]): five minutes of one-second samples
//! (requests/s by outcome, purchase p99, stock left, pending intents, drain
//! rate, outbox backlog), the recent events with their start, end and
//! sell-out times, and the alerts that hold. Serving it reads no database
//! and no Redis, however many tabs poll. The invariant checker (which walks
//! every buyer and wallet of an event) runs only when the operator presses
//! its button, through `GET /admin/events/{id}/invariants`.

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse},
};

use super::extract::Operator;
use crate::state::AppState;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// The sampler's last snapshot, as JSON.
pub async fn data(State(app): State<AppState>, _: Operator) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        app.dashboard.snapshot().to_string(),
    )
}
