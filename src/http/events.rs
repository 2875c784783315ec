//! `GET /api/events/{id}`: the public view of a sale.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Id, IfNoneMatch};
use crate::{
    catalog::{RenderedPage, SeenStock},
    db::events::Event,
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// Where a sale stands for shoppers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Before `starts_at`, or not preheated yet.
    Scheduled,
    Active,
    /// Stopped by an operator until resumed.
    Paused,
    SoldOut,
    Ended,
}

impl EventStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::SoldOut => "sold_out",
            Self::Ended => "ended",
        }
    }
}

/// The public view (SPEC §3); `status` is `scheduled`, `active`, `paused`
/// (by an operator), `sold_out` or `ended`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock_total: i64,
    pub stock_left: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub status: EventStatus,
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
    pub fn figures(event: &Event, redis_stock: Option<i64>) -> (i64, EventStatus) {
        let stock_left = redis_stock.unwrap_or(event.stock_total - event.sold);
        let now = Utc::now();
        let status = if now >= event.ends_at {
            EventStatus::Ended
        } else if event.paused_at.is_some() {
            EventStatus::Paused
        } else if now < event.starts_at || redis_stock.is_none() {
            EventStatus::Scheduled
        } else if stock_left <= 0 {
            EventStatus::SoldOut
        } else {
            EventStatus::Active
        };
        (stock_left, status)
    }
}

/// Every browser revalidates (a 304 when nothing changed); a shared cache
/// (CDN) may answer for one second.
const CACHE_CONTROL: HeaderValue =
    HeaderValue::from_static("public, max-age=0, s-maxage=1, stale-while-revalidate=1");

/// How old the `stock_left` shown is, in milliseconds.
const STOCK_AGE: HeaderName = HeaderName::from_static("x-stock-age-ms");

/// The page every shopper refreshes before and during the sale: answered
/// from the catalog, with no Postgres query and, while the event is being
/// viewed, no Redis round trip (the stock is read every 100 ms; the
/// `x-stock-age-ms` header says how old it is).
#[utoipa::path(
    get, path = "/api/events/{id}", operation_id = "show_event", tag = "shopper",
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "The ETag of an earlier answer: 304 while nothing changed"),
    ),
    responses(
        (status = 200, description = "The public view", body = EventView, headers(
            ("ETag" = String, description = "Changes with the stock left and the status"),
            ("Cache-Control" = String),
            ("x-stock-age-ms" = String, description = "How old the stock figure is, in ms"),
        )),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn show(
    State(app): State<AppState>,
    Id(id): Id,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let slot = app
        .catalog
        .get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let stock = match app.catalog.seen_stock(&slot) {
        Some(seen) => seen,
        None => {
            let left = app
                .redis
                .event_stock_left(crate::loading::event_buckets(&slot.event))
                .await?;
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
    let page = match slot.rendered_page(stock_left, status.as_str()) {
        Some(page) => page,
        None => {
            let view = EventView::new(&slot.event, stock.left);
            let etag = format!(
                "W/\"{}-{}-{}-{}\"",
                view.id,
                slot.event.version,
                view.stock_left,
                view.status.as_str()
            );
            let page = Arc::new(RenderedPage {
                stock_left,
                status: status.as_str(),
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
    let mut response = if if_none_match.is_some_and(|v| v.as_bytes() == page.etag.as_bytes()) {
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
    h.insert(STOCK_AGE, HeaderValue::from(stock.age.as_millis() as u64));
    Ok(response)
}
