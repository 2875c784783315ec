//! `events`: the sale definitions and their confirmed-sold counter.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};

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
    "id, name, price, stock_total, sold, per_user_limit, starts_at, ends_at, preheated_at, version";

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
