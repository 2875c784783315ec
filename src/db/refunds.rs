//! `refunds`: one immutable row per refunded order (UNIQUE order_no), written
//! in the transaction that credits the wallet; `stock_returned` is the one
//! change a row may take, once its units are back in the sale.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::DbError;
use crate::bucket::Bucket;

/// A refund as stored and answered.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq)]
pub struct Refund {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    /// `cancel` (the shopper's own) or `refund` (an operator's).
    pub kind: String,
    pub reason: String,
    /// The order's units went back to the sale's stock in Redis (or there
    /// was no sale in Redis to return them to).
    pub stock_returned: bool,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "order_no, event_id, user_id, quantity, amount, kind, reason, stock_returned, created_at";

pub struct NewRefund<'a> {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub kind: &'a str,
    pub reason: &'a str,
}

pub async fn insert(db: impl PgExecutor<'_>, new: &NewRefund<'_>) -> Result<Refund, DbError> {
    let sql = format!(
        "INSERT INTO refunds (order_no, event_id, user_id, quantity, amount, kind, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(new.order_no)
        .bind(new.event_id)
        .bind(new.user_id)
        .bind(new.quantity)
        .bind(new.amount)
        .bind(new.kind)
        .bind(new.reason)
        .fetch_one(db)
        .await?)
}

pub async fn get(db: impl PgExecutor<'_>, order_no: Uuid) -> Result<Option<Refund>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM refunds WHERE order_no = $1");
    Ok(sqlx::query_as(&sql)
        .bind(order_no)
        .fetch_optional(db)
        .await?)
}

/// Records that these refunds' units are back (a row already marked stays as is).
pub async fn mark_returned(db: impl PgExecutor<'_>, order_nos: &[Uuid]) -> Result<u64, DbError> {
    if order_nos.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "UPDATE refunds SET stock_returned = true, returned_at = now()
         WHERE order_no = ANY($1) AND NOT stock_returned",
    )
    .bind(order_nos)
    .execute(db)
    .await?
    .rows_affected())
}

/// An event's refunds whose units are not back yet, oldest first; with
/// `older_than`, only those committed before it (the reconciler leaves the
/// younger ones to the request that made them).
pub async fn unreturned(
    db: impl PgExecutor<'_>,
    event_id: i64,
    older_than: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Refund>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM refunds
         WHERE event_id = $1 AND NOT stock_returned AND ($2::timestamptz IS NULL OR created_at < $2)
         ORDER BY created_at, order_no LIMIT $3"
    );
    Ok(sqlx::query_as(&sql)
        .bind(event_id)
        .bind(older_than)
        .bind(limit)
        .fetch_all(db)
        .await?)
}

/// A page of an event's refunded order_nos, after `after` (a rebuild marks
/// them all returned).
pub async fn order_nos_after(
    db: impl PgExecutor<'_>,
    bucket: impl Into<Bucket>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, DbError> {
    let bucket: Bucket = bucket.into();
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT order_no FROM refunds WHERE event_id = $1 AND order_no > $2
           AND ($4 = 1 OR ((user_id % $4) + $4) % $4 = $5)
         ORDER BY order_no LIMIT $3",
    )
    .bind(bucket.event_id)
    .bind(after)
    .bind(limit)
    .bind(bucket.of as i64)
    .bind(bucket.index as i64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(o,)| o).collect())
}

/// Marks every refund of an event returned (a rebuild counted them so).
pub async fn mark_event_returned(db: impl PgExecutor<'_>, event_id: i64) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "UPDATE refunds SET stock_returned = true, returned_at = now()
         WHERE event_id = $1 AND NOT stock_returned",
    )
    .bind(event_id)
    .execute(db)
    .await?
    .rows_affected())
}

/// Cancellations (by shoppers) and refunds (by operators) of these events:
/// (event_id, cancelled, refunded), for the dashboard.
pub async fn counts_by_event(
    db: impl PgExecutor<'_>,
    event_ids: &[i64],
) -> Result<Vec<(i64, i64, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT r.event_id,
                count(*) FILTER (WHERE o.status = 'cancelled'),
                count(*) FILTER (WHERE o.status = 'refunded')
         FROM refunds r JOIN orders o USING (order_no)
         WHERE r.event_id = ANY($1) GROUP BY r.event_id",
    )
    .bind(event_ids)
    .fetch_all(db)
    .await?)
}
