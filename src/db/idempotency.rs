//! `idempotency_keys`: the Idempotency-Key records that bought something,
//! kept where the money is so that a Redis loss cannot make a key buy twice.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::DbError;

/// The durable half of a key's record.
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub order_no: Uuid,
}

/// The key's record, if it bought something and has not expired.
pub async fn find(
    db: impl PgExecutor<'_>,
    user_id: i64,
    key: &str,
) -> Result<Option<KeyRecord>, DbError> {
    Ok(sqlx::query_as(
        "SELECT fingerprint, order_no FROM idempotency_keys
         WHERE user_id = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(db)
    .await?)
}

/// A new key's purchase was accepted: record which order it produced.
pub struct Accepted<'a> {
    pub user_id: i64,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub order_no: Uuid,
    pub event_id: i64,
    pub expires_at: DateTime<Utc>,
}

/// Records an accepted key; returns the record the key holds afterwards,
/// which is another order's only when a concurrent attempt got there first
/// (possible only across a Redis loss: Redis serializes claims otherwise).
pub async fn record(db: &sqlx::PgPool, accepted: &Accepted<'_>) -> Result<KeyRecord, DbError> {
    // An expired row (the cleanup has not run yet) is replaced; a live one is kept.
    let inserted: Option<KeyRecord> = sqlx::query_as(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_no, event_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id, key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, order_no = EXCLUDED.order_no,
                event_id = EXCLUDED.event_id, created_at = now(), expires_at = EXCLUDED.expires_at
            WHERE idempotency_keys.expires_at <= now()
         RETURNING fingerprint, order_no",
    )
    .bind(accepted.user_id)
    .bind(accepted.key)
    .bind(accepted.fingerprint)
    .bind(accepted.order_no)
    .bind(accepted.event_id)
    .bind(accepted.expires_at)
    .fetch_optional(db)
    .await?;
    match inserted {
        Some(record) => Ok(record),
        // A live row was there: read it (a new statement sees it committed).
        None => find(db, accepted.user_id, accepted.key)
            .await?
            .ok_or_else(|| DbError::Sqlx(sqlx::Error::RowNotFound)),
    }
}

/// Deletes up to `limit` expired rows; returns how many went.
pub async fn delete_expired(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))",
    )
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}
