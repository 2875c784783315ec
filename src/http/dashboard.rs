//! `GET /admin/dashboard`: a live page for an operator watching a sale.
//!
//! The page itself holds no data; it asks for the operator token once (kept
//! in the tab's sessionStorage) and polls `/admin/dashboard/data` every
//! second, drawing stock left, accepted/confirmed/failed, money, channel
//! depth and the invariant checks of each recent event.

use axum::{extract::State, response::Html, Json};
use serde_json::{json, Value};

use super::{admin, extract::Operator};
use crate::{
    db,
    error::{ApiError, ErrorBody},
    state::AppState,
};

#[utoipa::path(
    get, path = "/admin/dashboard", operation_id = "dashboard_page", tag = "operator",
    responses((status = 200, description = "The page (no data; it asks for the operator token)", content_type = "text/html", body = String)),
)]
pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// Figures of the most recent events.
#[utoipa::path(
    get, path = "/admin/dashboard/data", operation_id = "dashboard_data", tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{instance, channel_depth, events: [{event, invariants}]}` for the 10 latest events", body = Object),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn data(State(app): State<AppState>, _: Operator) -> Result<Json<Value>, ApiError> {
    let mut events = Vec::new();
    for event in db::events::list_recent(&app.db, 10).await? {
        let view = admin::event_view(&app, &event).await?;
        let invariants = crate::invariants::check_event(&app.db, &app.redis, &event).await?;
        events.push(json!({"event": view, "invariants": invariants}));
    }
    Ok(Json(
        json!({"instance": app.instance, "channel_depth": app.writers.depth(), "events": events}),
    ))
}
