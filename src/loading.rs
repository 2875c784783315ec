//! Loading a sale into Redis: a first preheat, or a rebuild from Postgres
//! truth after Redis lost it. Used by the operator's preheat route and by
//! the reconciler.
//!
//! Both are fenced against the writers: they hold the event row `FOR UPDATE`
//! while they read Postgres and run the script, and every writer batch takes
//! `FOR KEY SHARE` on it first. A batch of intents a lost Redis accepted
//! either commits before the fence (and is counted, or the preheat refuses)
//! or is admitted against the loaded sale after it: never a full stock
//! loaded over orders that already took some.

use sqlx::PgPool;

use crate::{
    db::{self, events::Event, DbError},
    redis::{PersistedOrder, Redis, RedisError, SaleParams},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Redis does not hold the event but Postgres has orders for it: only a
    /// rebuild may load it.
    #[error("the event already has orders; rebuild it from Postgres")]
    HasOrders,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for LoadError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err.into())
    }
}

/// The sale as Redis holds it.
pub fn sale_params(event: &Event) -> SaleParams {
    SaleParams {
        price: event.price,
        per_user_limit: event.per_user_limit,
        starts_ms: event.starts_at.timestamp_millis(),
        ends_ms: event.ends_at.timestamp_millis(),
        stock_total: event.stock_total,
    }
}

/// Loads an event Redis does not hold yet; `Ok(false)` when it already did
/// (preheating twice is harmless). Refuses an event with orders that Redis
/// lost: that needs [`rebuild`].
pub async fn preheat(db: &PgPool, redis: &Redis, event: &Event) -> Result<bool, LoadError> {
    let mut tx = db.begin().await?;
    db::events::lock_for_loading(&mut *tx, event.id).await?;
    if !redis.is_loaded(event.id).await?
        && db::orders::count_for_event(&mut *tx, event.id).await? > 0
    {
        return Err(LoadError::HasOrders);
    }
    let loaded = redis.preheat(event.id, sale_params(event)).await?;
    tx.commit().await?;
    Ok(loaded)
}

/// Replaces an event's Redis state with Postgres truth plus the intents
/// Redis still holds. Returns (stock_left, intents kept).
pub async fn rebuild(db: &PgPool, redis: &Redis, event: &Event) -> Result<(i64, i64), LoadError> {
    let mut tx = db.begin().await?;
    db::events::lock_for_loading(&mut *tx, event.id).await?;
    let persisted: Vec<PersistedOrder> = db::orders::of_event(&mut *tx, event.id, None)
        .await?
        .into_iter()
        .map(|row| PersistedOrder {
            order_no: row.order_no,
            user_id: row.user_id,
            quantity: row.quantity,
            failed: row.failed,
        })
        .collect();
    let result = redis
        .rebuild(event.id, sale_params(event), &persisted)
        .await?;
    tx.commit().await?;
    Ok(result)
}
