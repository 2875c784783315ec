//! `GET /api/events/{id}`: the public view of a sale.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::extract::Id;
use crate::{
    catalog::{RenderedPage, SeenStock},
    db::events::Event,
    error::ApiError,
    state::AppState,
};

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
        let (stock_left, status) = Self::figures(event, redis_stock);
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

    /// The stock left and the status the page shows, now.
    pub fn figures(event: &Event, redis_stock: Option<i64>) -> (i64, &'static str) {
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
        (stock_left, status)
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
    // The crowd sees few distinct pages (one per stock level and status):
    // each is serialized once, then cloned.
    let (stock_left, status) = EventView::figures(&slot.event, stock.left);
    let page = match slot.rendered_page(stock_left, status) {
        Some(page) => page,
        None => {
            let view = EventView::new(&slot.event, stock.left);
            let etag = format!(
                "W/\"{}-{}-{}-{}\"",
                view.id, slot.event.version, view.stock_left, view.status
            );
            let page = Arc::new(RenderedPage {
                stock_left,
                status,
                body: serde_json::to_vec(&view)
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .into(),
                etag: HeaderValue::from_str(&etag)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            });
            slot.keep_page(page.clone());
            page
        }
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == page.etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            page.body.clone(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    h.insert(header::ETAG, page.etag.clone());
    h.insert(
        "x-stock-age-ms",
        HeaderValue::from(stock.age.as_millis() as u64),
    );
    Ok(response)
}
