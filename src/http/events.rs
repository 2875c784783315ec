//! `GET /api/events/{id}`: the public view of a sale.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::extract::Id;
use crate::{catalog::SeenStock, db::events::Event, error::ApiError, state::AppState};

/// The public view (SPEC §3); `status` is `scheduled`, `active`, `paused`
/// (by an operator), `sold_out` or `ended`.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock_total: i64,
    pub stock_left: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub status: &'static str,
}

impl EventView {
    /// `stock_left` from Redis when the event is loaded there, else from Postgres.
    pub fn new(event: &Event, redis_stock: Option<i64>) -> Self {
        let stock_left = redis_stock.unwrap_or(event.stock_total - event.sold);
        let now = Utc::now();
        let status = if now >= event.ends_at {
            "ended"
        } else if event.paused_at.is_some() {
            "paused"
        } else if now < event.starts_at || redis_stock.is_none() {
            "scheduled"
        } else if stock_left <= 0 {
            "sold_out"
        } else {
            "active"
        };
        Self {
            id: event.id,
            name: event.name.clone(),
            price: event.price,
            stock_total: event.stock_total,
            stock_left,
            per_user_limit: event.per_user_limit,
            starts_at: event.starts_at,
            ends_at: event.ends_at,
            status,
        }
    }
}

/// Every browser revalidates (a 304 when nothing changed); a shared cache
/// (CDN) may answer for one second.
const CACHE_CONTROL: HeaderValue =
    HeaderValue::from_static("public, max-age=0, s-maxage=1, stale-while-revalidate=1");

/// The page every shopper refreshes before and during the sale: answered
/// from the catalog, with no Postgres query and, while the event is being
/// viewed, no Redis round trip (the stock is read every 100 ms; the
/// `x-stock-age-ms` header says how old it is).
pub async fn show(
    State(app): State<AppState>,
    Id(id): Id,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let slot = app
        .catalog
        .get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let stock = match app.catalog.seen_stock(&slot) {
        Some(seen) => seen,
        None => {
            let left = app.redis.stock_left(id).await?;
            app.catalog.saw_stock(&slot, left);
            SeenStock {
                left,
                age: Duration::ZERO,
            }
        }
    };
    let view = EventView::new(&slot.event, stock.left);
    let etag = format!(
        "W/\"{}-{}-{}-{}\"",
        view.id, slot.event.version, view.stock_left, view.status
    );
    let age = stock.age.as_millis().to_string();
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(view).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(age) = HeaderValue::from_str(&age) {
        h.insert("x-stock-age-ms", age);
    }
    Ok(response)
}
