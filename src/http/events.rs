//! `GET /api/events/{id}`: the public view of a sale.

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::extract::Id;
use crate::{db::events::Event, error::ApiError, state::AppState};

/// The public view (SPEC §3).
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

pub async fn show(State(app): State<AppState>, Id(id): Id) -> Result<Json<EventView>, ApiError> {
    let event = crate::db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let stock = app.redis.stock_left(id).await?;
    Ok(Json(EventView::new(&event, stock)))
}
