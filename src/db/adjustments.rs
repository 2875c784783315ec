//! `stock_adjustments`: an operator's stock change, recorded before Redis
//! is touched (pending), then settled once: applied or refused.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};

use super::DbError;

/// A stock adjustment as stored.
#[derive(Clone, Debug, FromRow, Serialize, utoipa::ToSchema)]
pub struct Adjustment {
    pub id: i64,
    pub event_id: i64,
    pub delta: i64,
    pub reason: String,
    #[serde(skip)]
    pub request_key: Option<String>,
    /// `pending`, `applied` or `refused`.
    pub state: String,
    /// Why it was refused (`insufficient_stock`, `not_loaded`, …).
    pub refusal: Option<String>,
    pub stock_total_after: Option<i64>,
    pub stock_left_after: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, event_id, delta, reason, request_key, state, refusal, stock_total_after, stock_left_after, created_at, settled_at";

/// Records a pending adjustment; `None` when `request_key` was used for this
/// event already (read that one with [`by_key`]).
pub async fn insert(
    db: impl PgExecutor<'_>,
    event_id: i64,
    delta: i64,
    reason: &str,
    request_key: Option<&str>,
) -> Result<Option<Adjustment>, DbError> {
    let sql = format!(
        "INSERT INTO stock_adjustments (event_id, delta, reason, request_key)
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id, request_key) DO NOTHING
         RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(event_id)
        .bind(delta)
        .bind(reason)
        .bind(request_key)
        .fetch_optional(db)
        .await?)
}

pub async fn by_key(
    db: impl PgExecutor<'_>,
    event_id: i64,
    request_key: &str,
) -> Result<Option<Adjustment>, DbError> {
    let sql =
        format!("SELECT {COLUMNS} FROM stock_adjustments WHERE event_id = $1 AND request_key = $2");
    Ok(sqlx::query_as(&sql)
        .bind(event_id)
        .bind(request_key)
        .fetch_optional(db)
        .await?)
}

pub async fn by_id(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Adjustment>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM stock_adjustments WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

/// Ids of pending adjustments of any event recorded more than `older_than`
/// ago (a crash between the row and its settlement), oldest first, at most
/// `limit`.
pub async fn pending(
    db: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM stock_adjustments WHERE state = 'pending'
         AND created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// How many adjustments of the event are pending (recorded, not settled).
pub async fn pending_for_event(db: impl PgExecutor<'_>, event_id: i64) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM stock_adjustments WHERE event_id = $1 AND state = 'pending'",
    )
    .bind(event_id)
    .fetch_one(db)
    .await?;
    Ok(n)
}

/// The adjustment, taken `FOR UPDATE` (one settlement at a time).
pub async fn lock(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Adjustment>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM stock_adjustments WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

/// Marks a pending adjustment applied, with what the event held after it.
pub async fn mark_applied(
    db: impl PgExecutor<'_>,
    id: i64,
    stock_total_after: i64,
    stock_left_after: Option<i64>,
) -> Result<Adjustment, DbError> {
    let sql = format!(
        "UPDATE stock_adjustments SET state = 'applied', stock_total_after = $2,
                stock_left_after = $3, settled_at = now()
         WHERE id = $1 AND state = 'pending' RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(stock_total_after)
        .bind(stock_left_after)
        .fetch_one(db)
        .await?)
}

/// Marks a pending adjustment refused, and why.
pub async fn mark_refused(
    db: impl PgExecutor<'_>,
    id: i64,
    refusal: &str,
    stock_left: Option<i64>,
) -> Result<Adjustment, DbError> {
    let sql = format!(
        "UPDATE stock_adjustments SET state = 'refused', refusal = $2, stock_left_after = $3,
                settled_at = now()
         WHERE id = $1 AND state = 'pending' RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(refusal)
        .bind(stock_left)
        .fetch_one(db)
        .await?)
}

/// Σ delta of the event's applied adjustments and the number still pending.
pub async fn totals(db: impl PgExecutor<'_>, event_id: i64) -> Result<(i64, i64), DbError> {
    Ok(sqlx::query_as(
        "SELECT coalesce(sum(delta) FILTER (WHERE state = 'applied'), 0)::int8,
                count(*) FILTER (WHERE state = 'pending')
         FROM stock_adjustments WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(db)
    .await?)
}

/// Of these events, those with a stock addition still pending: Redis may
/// sell its units before Postgres's `stock_total` counts them.
pub async fn with_pending_addition(
    db: impl PgExecutor<'_>,
    event_ids: &[i64],
) -> Result<Vec<i64>, DbError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT DISTINCT event_id FROM stock_adjustments
         WHERE event_id = ANY($1) AND state = 'pending' AND delta > 0 ORDER BY event_id",
    )
    .bind(event_ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The adjustment taken `FOR UPDATE SKIP LOCKED`: `None` when it does not
/// exist or someone (the operator's call) is settling it right now.
pub async fn lock_unless_busy(
    db: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<Adjustment>, DbError> {
    let sql =
        format!("SELECT {COLUMNS} FROM stock_adjustments WHERE id = $1 FOR UPDATE SKIP LOCKED");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

/// Σ delta of the applied adjustments of these events: (event_id, units),
/// for the dashboard.
pub async fn applied_by_event(
    db: impl PgExecutor<'_>,
    event_ids: &[i64],
) -> Result<Vec<(i64, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT event_id, sum(delta)::int8 FROM stock_adjustments
         WHERE event_id = ANY($1) AND state = 'applied' GROUP BY event_id",
    )
    .bind(event_ids)
    .fetch_all(db)
    .await?)
}
