//! `events`: the sale definitions and their confirmed-sold counter.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};

use super::DbError;

/// A sale as stored. Price, stock, limit and window never change once created.
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
    pub version: i64,
    /// Seconds after a purchase during which its shopper may cancel it
    /// (`None`: no cancellation; an operator can still refund).
    pub cancel_window_seconds: Option<i32>,
}

pub struct NewEvent<'a> {
    pub name: &'a str,
    pub price: i64,
    pub stock_total: i64,
    pub per_user_limit: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, name, price, stock_total, sold, per_user_limit, starts_at, ends_at, preheated_at, version, cancel_window_seconds";

pub async fn insert(pool: &PgPool, new: &NewEvent<'_>) -> Result<Event, DbError> {
    let sql = format!("INSERT INTO events (name, price, stock_total, per_user_limit, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}");
    Ok(sqlx::query_as(&sql)
        .bind(new.name)
        .bind(new.price)
        .bind(new.stock_total)
        .bind(new.per_user_limit)
        .bind(new.starts_at)
        .bind(new.ends_at)
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
pub async fn add_sold(
    conn: &mut sqlx::PgConnection,
    sold: &BTreeMap<i64, i64>,
) -> Result<(), DbError> {
    for (event_id, quantity) in sold {
        sqlx::query("UPDATE events SET sold = sold + $2, version = version + 1 WHERE id = $1")
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

/// Units of a refunded order leave `sold` (Σ quantity of confirmed orders).
pub async fn remove_sold(db: impl PgExecutor<'_>, id: i64, quantity: i64) -> Result<(), DbError> {
    sqlx::query("UPDATE events SET sold = sold - $2, version = version + 1 WHERE id = $1")
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
