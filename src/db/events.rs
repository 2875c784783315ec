//! `events`: the sale definitions and their confirmed-sold counter.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};

use super::DbError;

/// A sale as stored. Its definition (name, price, limit, window, stock,
/// pause) changes only through the operator's fenced steps
/// ([`crate::lifecycle`]), each advancing `version` by one.
#[derive(Clone, Debug, FromRow, Serialize)]
pub struct Event {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock_total: i64,
    pub sold: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub preheated_at: Option<DateTime<Utc>>,
    /// Set while an operator has paused the sale.
    pub paused_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// Seconds after a purchase during which its shopper may cancel it
    /// (`None`: no cancellation; an operator can still refund).
    pub cancel_window_seconds: Option<i32>,
    /// Redis stock buckets (1: the whole sale on one hash tag); fixed at creation.
    pub stock_buckets: i32,
}

pub struct NewEvent<'a> {
    pub name: &'a str,
    pub price: i64,
    pub stock_total: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub stock_buckets: i32,
}

const COLUMNS: &str = "id, name, price, stock_total, sold, per_user_limit, starts_at, ends_at, preheated_at, paused_at, version, cancel_window_seconds, stock_buckets";

pub async fn insert(pool: &PgPool, new: &NewEvent<'_>) -> Result<Event, DbError> {
    let sql = format!("INSERT INTO events (name, price, stock_total, per_user_limit, starts_at, ends_at, stock_buckets) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}");
    Ok(sqlx::query_as(&sql)
        .bind(new.name)
        .bind(new.price)
        .bind(new.stock_total)
        .bind(new.per_user_limit)
        .bind(new.starts_at)
        .bind(new.ends_at)
        .bind(new.stock_buckets)
        .fetch_one(pool)
        .await?)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Event>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?)
}

/// [`get`] on any executor (a refund reads it in its transaction).
pub async fn get_in(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Event>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

pub async fn list_recent(pool: &PgPool, limit: i64) -> Result<Vec<Event>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM events ORDER BY id DESC LIMIT $1");
    Ok(sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?)
}

/// Records that the event was loaded into Redis (versioned: +1 per change).
pub async fn mark_preheated(pool: &PgPool, id: i64) -> Result<(), DbError> {
    sqlx::query("UPDATE events SET preheated_at = now(), version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes the event row `FOR UPDATE` for the transaction: writer batches,
/// which take `FOR KEY SHARE` on it first, wait until it ends.
pub async fn lock_for_loading(db: impl sqlx::PgExecutor<'_>, id: i64) -> Result<(), DbError> {
    sqlx::query("SELECT id FROM events WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The events of a writer batch, taken `FOR KEY SHARE` (a rebuild's `FOR
/// UPDATE` waits for the batch), with the units each has not sold yet.
pub async fn share_for_batch(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> Result<HashMap<i64, i64>, DbError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, stock_total - sold FROM events WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Adds confirmed units to events' `sold` (the CHECK `sold <= stock_total`
/// holds), one event at a time in id order (one lock order for every writer).
/// `version` stays: it counts changes to the sale's definition, not sales.
pub async fn add_sold(
    conn: &mut sqlx::PgConnection,
    sold: &BTreeMap<i64, i64>,
) -> Result<(), DbError> {
    for (event_id, quantity) in sold {
        sqlx::query("UPDATE events SET sold = sold + $2 WHERE id = $1")
            .bind(event_id)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Ids of events preheated once and not over for more than `for_after`:
/// those a Redis that lost everything may have to be rebuilt for.
pub async fn preheated_ids(
    db: impl PgExecutor<'_>,
    for_after: chrono::TimeDelta,
) -> Result<Vec<i64>, DbError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM events WHERE preheated_at IS NOT NULL
         AND ends_at > now() - make_interval(secs => $1)",
    )
    .bind(for_after.num_seconds() as f64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The highest event id (0 when there is none).
pub async fn max_id(db: impl PgExecutor<'_>) -> Result<i64, DbError> {
    let (max,): (Option<i64>,) = sqlx::query_as("SELECT max(id) FROM events")
        .fetch_one(db)
        .await?;
    Ok(max.unwrap_or(0))
}

/// Takes an event's row `FOR KEY SHARE` for a refund: like a writer batch,
/// it cannot commit across a rebuild or a preheat (they take `FOR UPDATE`).
pub async fn share_for_refund(db: impl PgExecutor<'_>, id: i64) -> Result<(), DbError> {
    sqlx::query("SELECT id FROM events WHERE id = $1 FOR KEY SHARE")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Units of a refunded order leave `sold` (Σ quantity of confirmed orders);
/// like the writers' `add_sold`, not an operator's change: the version stays.
pub async fn remove_sold(db: impl PgExecutor<'_>, id: i64, quantity: i64) -> Result<(), DbError> {
    sqlx::query("UPDATE events SET sold = sold - $2 WHERE id = $1")
        .bind(id)
        .bind(quantity)
        .execute(db)
        .await?;
    Ok(())
}

/// Sets the window in which shoppers may cancel their orders (`None`: no
/// cancellation).
pub async fn set_cancel_window(
    db: impl PgExecutor<'_>,
    id: i64,
    seconds: Option<i32>,
) -> Result<Option<Event>, DbError> {
    let sql = format!(
        "UPDATE events SET cancel_window_seconds = $2, version = version + 1 WHERE id = $1 RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(seconds)
        .fetch_optional(db)
        .await?)
}

/// The event row taken `FOR UPDATE` (the fence of [`lock_for_loading`]),
/// read as the transaction sees it: what a fenced step works from.
pub async fn lock_fresh(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Event>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

/// An event's definition as an operator changes it.
pub struct Definition<'a> {
    pub name: &'a str,
    pub price: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// When the sale was paused (Redis's clock), `None` when it is not.
    pub paused_at: Option<DateTime<Utc>>,
}

/// Writes a new definition, and adds `stock_delta` (an applied stock
/// adjustment) to the total, if the row is still at `version`: one change,
/// version + 1. The event after, or `None` when the version moved.
pub async fn update_definition(
    db: impl PgExecutor<'_>,
    id: i64,
    version: i64,
    def: &Definition<'_>,
    stock_delta: i64,
) -> Result<Option<Event>, DbError> {
    let sql = format!(
        "UPDATE events SET name = $3, price = $4, per_user_limit = $5, starts_at = $6,
                ends_at = $7,
                paused_at = $8,
                stock_total = stock_total + $9,
                version = version + 1
         WHERE id = $1 AND version = $2 RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(version)
        .bind(def.name)
        .bind(def.price)
        .bind(def.per_user_limit)
        .bind(def.starts_at)
        .bind(def.ends_at)
        .bind(def.paused_at)
        .bind(stock_delta)
        .fetch_optional(db)
        .await?)
}

/// Adds an applied stock adjustment to the event's total (versioned: +1).
pub async fn add_stock(db: impl PgExecutor<'_>, id: i64, delta: i64) -> Result<Event, DbError> {
    let sql = format!(
        "UPDATE events SET stock_total = stock_total + $2, version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(delta)
        .fetch_one(db)
        .await?)
}

/// The lifecycle filter of the operator's event list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before `starts_at`, not paused.
    Scheduled,
    /// Between the start and the end, not paused (running or sold out: the
    /// caller tells them apart by the live stock).
    Open,
    /// Paused and not ended.
    Paused,
    /// At or after `ends_at`.
    Ended,
}

/// Up to `limit` events with ids above `after`, oldest id first, in `phase`
/// (`None`: all of them), as of Postgres's clock.
pub async fn page(
    db: impl PgExecutor<'_>,
    phase: Option<Phase>,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, DbError> {
    let filter = match phase {
        None => "TRUE",
        Some(Phase::Scheduled) => "ends_at > now() AND paused_at IS NULL AND starts_at > now()",
        Some(Phase::Open) => "ends_at > now() AND paused_at IS NULL AND starts_at <= now()",
        Some(Phase::Paused) => "ends_at > now() AND paused_at IS NOT NULL",
        Some(Phase::Ended) => "ends_at <= now()",
    };
    let sql =
        format!("SELECT {COLUMNS} FROM events WHERE id > $1 AND {filter} ORDER BY id LIMIT $2");
    Ok(sqlx::query_as(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?)
}

/// The cached events whose definition moved: (id, version) pairs in, the
/// events whose version differs (or that are gone: absent) out.
pub async fn changed_since(
    db: impl PgExecutor<'_>,
    known: &[(i64, i64)],
) -> Result<Vec<Event>, DbError> {
    let ids: Vec<i64> = known.iter().map(|(id, _)| *id).collect();
    let versions: Vec<i64> = known.iter().map(|(_, v)| *v).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM events
         JOIN unnest($1::int8[], $2::int8[]) AS k(known_id, known_version) ON id = known_id
         WHERE version <> known_version"
    );
    Ok(sqlx::query_as(&sql)
        .bind(ids)
        .bind(versions)
        .fetch_all(db)
        .await?)
}

/// The stock the event was created with (before any adjustment).
pub async fn stock_initial(db: impl PgExecutor<'_>, id: i64) -> Result<i64, DbError> {
    let (initial,): (Option<i64>,) =
        sqlx::query_as("SELECT stock_initial FROM events WHERE id = $1")
            .bind(id)
            .fetch_one(db)
            .await?;
    Ok(initial.unwrap_or_default())
}
