//! `orders`: the batch writes of the writers, and reads for the API, the
//! admin figures, the reconciler and the checker.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};
use uuid::Uuid;

use crate::intent::Intent;

use super::DbError;
use crate::bucket::Bucket;

/// An order as the shopper and operator see it.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Order {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    #[schema(value_type = crate::intent::OrderStatus)]
    pub status: String,
    /// `failed` orders: `insufficient_funds`, `no_wallet`, `stock_lost`, `not_accepted`.
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

/// [`figures`] of several events in one statement (an operator's page of
/// events); an event without orders is absent.
pub async fn figures_of(
    pool: &PgPool,
    event_ids: &[i64],
) -> Result<std::collections::HashMap<i64, EventFigures>, DbError> {
    #[derive(FromRow)]
    struct Row {
        event_id: i64,
        #[sqlx(flatten)]
        figures: EventFigures,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id,
                count(*) FILTER (WHERE status = 'confirmed')                        AS confirmed_orders,
                coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)::int8 AS confirmed_quantity,
                coalesce(sum(amount)   FILTER (WHERE status = 'confirmed'), 0)::int8 AS confirmed_amount,
                count(*) FILTER (WHERE status = 'failed')                           AS failed_orders,
                coalesce(sum(quantity) FILTER (WHERE status = 'failed'), 0)::int8    AS failed_quantity
         FROM orders WHERE event_id = ANY($1) GROUP BY event_id",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.event_id, r.figures)).collect())
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

/// Writes the order as failed unless Postgres has it already, with its
/// `order.failed` outbox row in the same statement; true when this call
/// wrote it. A writer that later persists the same order_no finds it there
/// and charges nothing.
pub async fn insert_failed_unless_present(
    db: impl sqlx::PgExecutor<'_>,
    order: &FailedOrder,
) -> Result<bool, DbError> {
    let sql = super::outbox::with_event_of_inserted(
        "INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, failure_reason, created_at)
         VALUES ($1, $2, $3, $4, $5, 'failed', $6, now())
         ON CONFLICT (order_no) DO NOTHING
         RETURNING order_no, event_id, user_id, quantity, amount, status, failure_reason, created_at",
        super::outbox::kind::FAILED,
    );
    let (inserted,): (i64,) = sqlx::query_as(&sql)
        .bind(order.order_no)
        .bind(order.event_id)
        .bind(order.user_id)
        .bind(order.quantity)
        .bind(order.amount)
        .bind(order.reason)
        .fetch_one(db)
        .await?;
    Ok(inserted == 1)
}

/// Orders of an event in Postgres, failed ones included.
pub async fn count_for_event(db: impl sqlx::PgExecutor<'_>, event_id: i64) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(db)
        .await?;
    Ok(n)
}

/// Inserts a batch of accepted intents as confirmed orders, skipping those
/// already there (`ON CONFLICT (order_no) DO NOTHING`: writers retry and the
/// reconciler replays); returns the order_nos this call inserted.
pub async fn insert_confirmed(
    db: impl PgExecutor<'_>,
    batch: &[Intent],
) -> Result<HashSet<Uuid>, DbError> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        // persisted_at is the statement's clock, not now() (the transaction's
        // start, before the admission round trips and any lock wait): the
        // reconciler tells a batch its writer is still acking by it.
        "INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, created_at, persisted_at)
         SELECT o, e, u, q, a, 'confirmed', c, clock_timestamp() FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::timestamptz[]) AS t(o, e, u, q, a, c)
         ON CONFLICT (order_no) DO NOTHING
         RETURNING order_no",
    )
    .bind(batch.iter().map(|i| i.order_no).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.event_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.user_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.quantity).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.amount).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.accepted_at).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(o,)| o).collect())
}

/// How persisted orders ended: the failure reason, `None` when confirmed.
pub async fn failure_reasons(
    db: impl PgExecutor<'_>,
    order_nos: &[Uuid],
) -> Result<HashMap<Uuid, Option<String>>, DbError> {
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT order_no, failure_reason FROM orders WHERE order_no = ANY($1)")
            .bind(order_nos)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Which of these order_nos Postgres has refunded (cancelled or refunded).
pub async fn refunded_among(
    db: impl PgExecutor<'_>,
    order_nos: &[Uuid],
) -> Result<HashSet<Uuid>, DbError> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT order_no FROM orders WHERE order_no = ANY($1) AND status IN ('cancelled', 'refunded')",
    )
    .bind(order_nos)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(o,)| o).collect())
}

/// Marks orders inserted by this batch as failed, with their reasons.
pub async fn mark_failed(
    db: impl PgExecutor<'_>,
    failed: &HashMap<Uuid, &'static str>,
) -> Result<(), DbError> {
    if failed.is_empty() {
        return Ok(());
    }
    let done = sqlx::query(
        "UPDATE orders AS o SET status = 'failed', failure_reason = f.reason
         FROM UNNEST($1::uuid[], $2::text[]) AS f(order_no, reason)
         WHERE o.order_no = f.order_no AND o.status = 'confirmed'",
    )
    .bind(failed.keys().copied().collect::<Vec<_>>())
    .bind(failed.values().map(|r| r.to_string()).collect::<Vec<_>>())
    .execute(db)
    .await?;
    debug_assert_eq!(done.rows_affected() as usize, failed.len());
    Ok(())
}

/// An order of a buyer as the reconciler and a rebuild see it.
#[derive(Clone, Copy, Debug, FromRow)]
pub struct BuyerRow {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i32,
    /// Holds no units: failed, or refunded (cancelled) with its units back.
    pub failed: bool,
    /// Refunded, and its units may not be back in Redis yet (the
    /// refund's `stock_returned` is not set).
    pub refund_in_flight: bool,
}

/// The orders of some buyers of an event, each buyer's oldest first (a
/// refunded one counts as `failed`: it holds nothing once its units are
/// back, which a rebuild makes so); with
/// `accepted_until`, only those Redis accepted no later than that (index
/// `orders_event_user_idx`).
pub async fn of_buyers(
    db: impl PgExecutor<'_>,
    event_id: i64,
    users: &[i64],
    accepted_until: Option<DateTime<Utc>>,
) -> Result<Vec<BuyerRow>, DbError> {
    Ok(sqlx::query_as(
        "SELECT o.order_no, o.user_id, o.quantity, o.status <> 'confirmed' AS failed,
                coalesce(NOT r.stock_returned, false) AS refund_in_flight
         FROM orders o LEFT JOIN refunds r USING (order_no)
         WHERE o.event_id = $1 AND o.user_id = ANY($2) AND ($3::timestamptz IS NULL OR o.created_at <= $3)
         ORDER BY o.user_id, o.created_at, o.order_no",
    )
    .bind(event_id)
    .bind(users)
    .bind(accepted_until)
    .fetch_all(db)
    .await?)
}

/// A page of an event's buyers in Postgres, by user id after `after`.
pub async fn buyers_after(
    db: impl PgExecutor<'_>,
    bucket: impl Into<Bucket>,
    after: i64,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    let bucket: Bucket = bucket.into();
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT DISTINCT user_id FROM orders WHERE event_id = $1 AND user_id > $2
           AND ($4 = 1 OR ((user_id % $4) + $4) % $4 = $5)
         ORDER BY user_id LIMIT $3",
    )
    .bind(bucket.event_id)
    .bind(after)
    .bind(limit)
    .bind(bucket.of as i64)
    .bind(bucket.index as i64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(u,)| u).collect())
}

/// Takes an order's row `FOR UPDATE` for a refund: two refunds of one order
/// (a double click, two engine processes) run one after the other, and the
/// second sees the first's outcome.
pub async fn lock_for_refund(
    db: impl PgExecutor<'_>,
    order_no: Uuid,
) -> Result<Option<Order>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_no = $1 FOR UPDATE");
    Ok(sqlx::query_as(&sql)
        .bind(order_no)
        .fetch_optional(db)
        .await?)
}

/// A confirmed order becomes `cancelled` or `refunded`; false when it was not confirmed.
pub async fn mark_refunded(
    db: impl PgExecutor<'_>,
    order_no: Uuid,
    status: &str,
) -> Result<bool, DbError> {
    Ok(
        sqlx::query("UPDATE orders SET status = $2 WHERE order_no = $1 AND status = 'confirmed'")
            .bind(order_no)
            .bind(status)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Which filters an operator's order listing takes.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub event_id: Option<i64>,
    pub user_id: Option<i64>,
    pub status: Option<String>,
}

/// A page of orders matching `filter`, by order_no after `after` (keyset:
/// the primary key's order, stable while orders are added).
pub async fn list_filtered(
    db: impl PgExecutor<'_>,
    filter: &OrderFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM orders
         WHERE ($1::int8 IS NULL OR event_id = $1) AND ($2::int8 IS NULL OR user_id = $2)
           AND ($3::text IS NULL OR status = $3) AND ($4::uuid IS NULL OR order_no > $4)
         ORDER BY order_no LIMIT $5"
    );
    Ok(sqlx::query_as(&sql)
        .bind(filter.event_id)
        .bind(filter.user_id)
        .bind(filter.status.as_deref())
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?)
}

/// The columns of an order export, in order.
pub const EXPORT_COLUMNS: &str = COLUMNS;

/// Every order of an event as a stream of rows, straight from the server
/// (no buffering of the result: rows arrive as the client reads them).
pub fn stream_for_event<'e>(
    db: impl PgExecutor<'e> + 'e,
    event_id: i64,
) -> futures_util::stream::BoxStream<'e, Result<Order, sqlx::Error>> {
    sqlx::query_as::<_, Order>(
        "SELECT order_no, event_id, user_id, quantity, amount, status, failure_reason, created_at
         FROM orders WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch(db)
}
