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

/// A new key's purchase was accepted: record which order it produced.
pub struct Accepted<'a> {
    pub user_id: i64,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub order_no: Uuid,
    pub event_id: i64,
    pub expires_at: DateTime<Utc>,
}

/// One key of a batch: (user_id, key).
pub type KeyId = (i64, String);

/// The live records of several keys, in one query.
pub async fn find_many(
    db: impl PgExecutor<'_>,
    keys: &[KeyId],
) -> Result<Vec<(KeyId, KeyRecord)>, DbError> {
    let (users, names): (Vec<i64>, Vec<&str>) = keys.iter().map(|(u, k)| (*u, k.as_str())).unzip();
    let rows: Vec<(i64, String, String, Uuid)> = sqlx::query_as(
        "SELECT k.user_id, k.key, k.fingerprint, k.order_no
         FROM idempotency_keys k
         JOIN UNNEST($1::bigint[], $2::text[]) AS q(user_id, key) USING (user_id, key)
         WHERE k.expires_at > now()",
    )
    .bind(&users)
    .bind(&names)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, key, fingerprint, order_no)| {
            (
                (user_id, key),
                KeyRecord {
                    fingerprint,
                    order_no,
                },
            )
        })
        .collect())
}

/// Records several accepted keys in one statement (one commit for all);
/// each key must appear once. Returns the records this statement wrote;
/// a key missing from them held a live record already.
pub async fn record_many(
    db: impl PgExecutor<'_>,
    accepted: &[Accepted<'_>],
) -> Result<Vec<(KeyId, KeyRecord)>, DbError> {
    let users: Vec<i64> = accepted.iter().map(|a| a.user_id).collect();
    let keys: Vec<&str> = accepted.iter().map(|a| a.key).collect();
    let fingerprints: Vec<&str> = accepted.iter().map(|a| a.fingerprint).collect();
    let order_nos: Vec<Uuid> = accepted.iter().map(|a| a.order_no).collect();
    let events: Vec<i64> = accepted.iter().map(|a| a.event_id).collect();
    let expires: Vec<DateTime<Utc>> = accepted.iter().map(|a| a.expires_at).collect();
    // An expired row (the cleanup has not run yet) is replaced; a live one is kept.
    let rows: Vec<(i64, String, String, Uuid)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_no, event_id, expires_at)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::uuid[], $5::bigint[],
                              $6::timestamptz[])
         ON CONFLICT (user_id, key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, order_no = EXCLUDED.order_no,
                event_id = EXCLUDED.event_id, created_at = now(), expires_at = EXCLUDED.expires_at
            WHERE idempotency_keys.expires_at <= now()
         RETURNING user_id, key, fingerprint, order_no",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(&order_nos)
    .bind(&events)
    .bind(&expires)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, key, fingerprint, order_no)| {
            (
                (user_id, key),
                KeyRecord {
                    fingerprint,
                    order_no,
                },
            )
        })
        .collect())
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
