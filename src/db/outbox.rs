//! `outbox`: order events owed to the broker, written in the transaction
//! that changed the order, read and stamped by the relay ([`crate::outbox`]).
//!
//! Every payload is built here, in SQL, from the same values the order row
//! got, so what the broker carries is exactly what was committed.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::DbError;

/// The kinds of order events. Adding one is one line here (and the code
/// that writes it); the table and the relay take any `order.*` kind.
pub mod kind {
    pub const CONFIRMED: &str = "order.confirmed";
    pub const FAILED: &str = "order.failed";
    /// Cancelled by its shopper (refunded, units back).
    pub const CANCELLED: &str = "order.cancelled";
    /// Refunded by an operator (units back).
    pub const REFUNDED: &str = "order.refunded";
}

/// The payload of an order event, as SQL (the columns of `src`, an order
/// row or its UNNEST twin: order_no, event_id, user_id, quantity, amount,
/// status, failure_reason, created_at; and `kind`).
const PAYLOAD_SQL: &str = "jsonb_build_object(
    'kind', kind, 'order_no', order_no, 'event_id', event_id, 'user_id', user_id,
    'quantity', quantity, 'amount', amount, 'status', status,
    'failure_reason', failure_reason, 'accepted_at', created_at,
    'committed_at', clock_timestamp())";

/// An order's new state, as the writer committed it.
#[derive(Clone, Copy, Debug)]
pub struct OrderEvent<'a> {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    /// When Redis accepted the purchase (`orders.created_at`).
    pub accepted_at: DateTime<Utc>,
    /// `None`: confirmed.
    pub failure_reason: Option<&'a str>,
}

impl OrderEvent<'_> {
    pub fn kind(&self) -> &'static str {
        match self.failure_reason {
            None => kind::CONFIRMED,
            Some(_) => kind::FAILED,
        }
    }
}

/// Records the events of a batch: one statement, whatever its size.
pub async fn record(db: impl PgExecutor<'_>, events: &[OrderEvent<'_>]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO outbox (order_no, event_id, kind, payload)
         SELECT order_no, event_id, kind, {PAYLOAD_SQL}
         FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::text[], $7::text[], $8::timestamptz[])
              AS t(order_no, event_id, user_id, quantity, amount, kind, failure_reason, created_at),
              LATERAL (SELECT CASE WHEN failure_reason IS NULL THEN 'confirmed' ELSE 'failed' END AS status) s"
    );
    sqlx::query(&sql)
        .bind(events.iter().map(|e| e.order_no).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.user_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.quantity).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.amount).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.failure_reason).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.accepted_at).collect::<Vec<_>>())
        .execute(db)
        .await?;
    Ok(())
}

/// Records an order's change of state as its row now stands, in the
/// transaction that made it (a cancellation or a refund).
pub async fn record_order_now(
    db: impl PgExecutor<'_>,
    order_no: Uuid,
    kind: &str,
) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO outbox (order_no, event_id, kind, payload)
         SELECT order_no, event_id, kind, {PAYLOAD_SQL}
         FROM (SELECT *, $2::text AS kind FROM orders WHERE order_no = $1) src"
    );
    sqlx::query(&sql)
        .bind(order_no)
        .bind(kind)
        .execute(db)
        .await?;
    Ok(())
}

/// The `INSERT ... RETURNING` of one order row, wrapped so that its outbox
/// row is written by the same statement, only when the order was: a CTE
/// named `ins` must return the order's columns (see [`PAYLOAD_SQL`]).
pub(super) fn with_event_of_inserted(insert_returning_order: &str, kind: &str) -> String {
    format!(
        "WITH ins AS ({insert_returning_order}),
              ev AS (INSERT INTO outbox (order_no, event_id, kind, payload)
                     SELECT order_no, event_id, kind, {PAYLOAD_SQL}
                     FROM (SELECT *, '{kind}'::text AS kind FROM ins) src
                     RETURNING 1)
         SELECT count(*) FROM ins"
    )
}

/// An event the relay still owes the broker.
#[derive(Clone, Debug, FromRow)]
pub struct Unpublished {
    pub id: i64,
    pub order_no: Uuid,
    pub event_id: i64,
    pub kind: String,
    /// The JSON payload, as text (published as is).
    pub payload: String,
}

/// The oldest unpublished rows, in id order.
pub async fn unpublished(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Unpublished>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, order_no, event_id, kind, payload::text AS payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Stamps rows the broker acknowledged.
pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Most unpublished rows [`backlog`] counts: past it the figure is a floor,
/// and the cost of a measure stays bounded (a relay switched off for days).
pub const BACKLOG_COUNT_CAP: i64 = 100_000;

/// What the relay owes: unpublished rows (at most [`BACKLOG_COUNT_CAP`]) and
/// the age of the oldest, in seconds. Both walk the partial index of
/// unpublished rows only.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<(i64, f64), DbError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT $1) t),
                coalesce((SELECT extract(epoch FROM now() - created_at)::float8 FROM outbox
                          WHERE published_at IS NULL ORDER BY id LIMIT 1), 0)",
    )
    .bind(BACKLOG_COUNT_CAP)
    .fetch_one(db)
    .await?)
}

/// Deletes, among the `chunk` oldest rows, those published before
/// `published_before`; returns how many. Bounded work per call (the head of
/// the primary key), so the caller loops while it deletes a full chunk.
pub async fn delete_published(
    db: impl PgExecutor<'_>,
    published_before: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $2)
         AND published_at < $1",
    )
    .bind(published_before)
    .bind(chunk)
    .execute(db)
    .await?
    .rows_affected())
}

/// Every event of one sale, in id order (tests and the load-test verdict).
pub async fn of_event(
    db: impl PgExecutor<'_>,
    event_id: i64,
) -> Result<Vec<(i64, Uuid, String, Option<DateTime<Utc>>)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, order_no, kind, published_at FROM outbox WHERE event_id = $1 ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(db)
    .await?)
}
