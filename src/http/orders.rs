//! `GET /api/orders/{order_no}` and `GET /api/me/orders`.
//!
//! An order is `pending` while its intent sits in the Redis ledger, then
//! `confirmed` or `failed` once a writer has committed it to Postgres.

use axum::{extract::State, Json};
use uuid::Uuid;

use super::extract::{PathText, Shopper};
use crate::{
    db::{self, orders::Order},
    error::{ApiError, ErrorBody},
    intent::{from_millis, LedgerEntry},
    loading,
    state::AppState,
};

fn pending(order_no: Uuid, event_id: i64, entry: LedgerEntry) -> Order {
    Order {
        order_no,
        event_id,
        user_id: entry.user_id,
        quantity: entry.quantity,
        amount: entry.amount,
        status: "pending".into(),
        failure_reason: None,
        created_at: from_millis(entry.accepted_ms),
    }
}

/// The order wherever it is now: Postgres first, then the live ledgers.
async fn find(app: &AppState, order_no: Uuid) -> Result<Option<Order>, ApiError> {
    if let Some(order) = db::orders::get(&app.db, order_no).await? {
        return Ok(Some(order));
    }
    for event_id in app.redis.live_events().await? {
        let Some(slot) = app.catalog.get(&app.db, event_id).await? else {
            continue;
        };
        if let Some((_, entry)) = app
            .redis
            .event_ledger_entries(loading::event_buckets(&slot.event), &[order_no])
            .await?
            .pop()
        {
            return Ok(Some(pending(order_no, event_id, entry)));
        }
    }
    // A writer may have committed and acked between the two looks.
    Ok(db::orders::get(&app.db, order_no).await?)
}

#[utoipa::path(
    get, path = "/api/orders/{order_no}", operation_id = "show_order", tag = "shopper",
    security(("shopper_jwt" = [])),
    params(("order_no" = String, Path, format = Uuid, description = "The order number a 202 gave")),
    responses(
        (status = 200, description = "The caller's order, wherever it is now", body = Order),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or someone else's", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the shopper's budget is spent", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn show(
    State(app): State<AppState>,
    Shopper(user_id): Shopper,
    PathText(raw): PathText,
) -> Result<Json<Order>, ApiError> {
    let order_no: Uuid = raw.parse().map_err(|_| ApiError::NotFound("order"))?;
    match find(&app, order_no).await? {
        // Someone else's order is indistinguishable from no order.
        Some(order) if order.user_id == user_id => Ok(Json(order)),
        _ => Err(ApiError::NotFound("order")),
    }
}

/// Most orders returned by `/api/me/orders`.
const MY_ORDERS_LIMIT: i64 = 200;

#[utoipa::path(
    get, path = "/api/me/orders", operation_id = "my_orders", tag = "shopper",
    security(("shopper_jwt" = [])),
    responses(
        (status = 200, description = "The caller's orders, newest first (at most 200, and every pending one)", body = Vec<Order>),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the shopper's budget is spent", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn mine(
    State(app): State<AppState>,
    Shopper(user_id): Shopper,
) -> Result<Json<Vec<Order>>, ApiError> {
    let mut orders = db::orders::list_for_user(&app.db, user_id, MY_ORDERS_LIMIT).await?;
    for event_id in app.redis.live_events().await? {
        let Some(slot) = app.catalog.get(&app.db, event_id).await? else {
            continue;
        };
        let home = loading::home_bucket(&slot.event, user_id);
        let held: Vec<Uuid> = app
            .redis
            .buyer_orders(home, user_id)
            .await?
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        let unseen: Vec<Uuid> = held
            .into_iter()
            .filter(|o| !orders.iter().any(|p| p.order_no == *o))
            .collect();
        for (order_no, entry) in app.redis.ledger_entries(home, &unseen).await? {
            orders.push(pending(order_no, event_id, entry));
        }
    }
    orders.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.order_no.cmp(&a.order_no))
    });
    Ok(Json(orders))
}
