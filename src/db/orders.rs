//! `orders`, `payments`, `wallet_debits`: reads for the API, the admin
//! figures and the reconciler. Writes live in `writer::persist`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::DbError;

/// An order as the shopper and operator see it.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct Order {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub status: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "order_no, event_id, user_id, quantity, amount, status, failure_reason, created_at";

pub async fn get(pool: &PgPool, order_no: Uuid) -> Result<Option<Order>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_no = $1");
    Ok(sqlx::query_as(&sql)
        .bind(order_no)
        .fetch_optional(pool)
        .await?)
}

/// A shopper's orders, newest first.
pub async fn list_for_user(pool: &PgPool, user_id: i64, limit: i64) -> Result<Vec<Order>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC, order_no DESC LIMIT $2");
    Ok(sqlx::query_as(&sql)
        .bind(user_id)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Which of these order_nos are persisted: the failure reason (`None` when
/// confirmed), and whether the commit is older than `settled_after` (younger
/// ones are still being acked by their writer).
pub async fn statuses(
    pool: &PgPool,
    order_nos: &[Uuid],
    settled_after: std::time::Duration,
) -> Result<Vec<(Uuid, Option<String>, bool)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT order_no, failure_reason, persisted_at < now() - make_interval(secs => $2) FROM orders WHERE order_no = ANY($1)",
    )
    .bind(order_nos)
    .bind(settled_after.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// Persisted figures of one event.
#[derive(Clone, Copy, Debug, Default, FromRow, Serialize, PartialEq, Eq)]
pub struct EventFigures {
    pub confirmed_orders: i64,
    pub confirmed_quantity: i64,
    pub confirmed_amount: i64,
    pub failed_orders: i64,
    pub failed_quantity: i64,
}

pub async fn figures(pool: &PgPool, event_id: i64) -> Result<EventFigures, DbError> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'confirmed')                        AS confirmed_orders,
                coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)::int8 AS confirmed_quantity,
                coalesce(sum(amount)   FILTER (WHERE status = 'confirmed'), 0)::int8 AS confirmed_amount,
                count(*) FILTER (WHERE status = 'failed')                           AS failed_orders,
                coalesce(sum(quantity) FILTER (WHERE status = 'failed'), 0)::int8    AS failed_quantity
         FROM orders WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(pool)
    .await?)
}

/// An order written as failed without ever being charged.
pub struct FailedOrder {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub reason: &'static str,
}

/// Writes the order as failed unless Postgres has it already; true when this
/// call wrote it. A writer that later persists the same order_no finds it
/// there and charges nothing.
pub async fn insert_failed_unless_present(
    db: impl sqlx::PgExecutor<'_>,
    order: &FailedOrder,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, failure_reason, created_at)
         VALUES ($1, $2, $3, $4, $5, 'failed', $6, now())
         ON CONFLICT (order_no) DO NOTHING",
    )
    .bind(order.order_no)
    .bind(order.event_id)
    .bind(order.user_id)
    .bind(order.quantity)
    .bind(order.amount)
    .bind(order.reason)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Orders of an event in Postgres, failed ones included.
pub async fn count_for_event(db: impl sqlx::PgExecutor<'_>, event_id: i64) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(db)
        .await?;
    Ok(n)
}
