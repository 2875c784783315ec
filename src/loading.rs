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
//!
//! The operator's changes to a live sale ([`crate::lifecycle`]: end, pause,
//! edits, stock adjustments) take the same fence, and each step reads the
//! event as the fence holder sees it, so a rebuild never loads a window,
//! pause or total that an operator changed while it waited.

use sqlx::PgPool;

use crate::{
    db::{self, events::Event, DbError},
    redis::{state::PAGE, PersistedOrder, RebuiltBuyer, Redis, RedisError, SaleParams},
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
        paused: event.paused_at.is_some(),
    }
}

/// Loads an event Redis does not hold yet; `Ok(false)` when it already did
/// (preheating twice is harmless). Refuses an event with orders that Redis
/// lost: that needs [`rebuild`].
pub async fn preheat(db: &PgPool, redis: &Redis, event: &Event) -> Result<bool, LoadError> {
    let mut tx = db.begin().await?;
    let fresh = db::events::lock_fresh(&mut *tx, event.id).await?;
    let event = fresh.as_ref().unwrap_or(event);
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
/// Redis still holds, in bounded steps: the buyers a Postgres page at a time,
/// then the ledger a page at a time. The sale is unloaded meanwhile
/// (purchases answer `not_active`). Returns (stock_left, intents kept).
pub async fn rebuild(db: &PgPool, redis: &Redis, event: &Event) -> Result<(i64, i64), LoadError> {
    let mut tx = db.begin().await?;
    let fresh = db::events::lock_fresh(&mut *tx, event.id).await?;
    rebuild_fenced(db, redis, fresh.as_ref().unwrap_or(event), tx).await
}

/// [`rebuild`], only when Redis still lacks the sale or its counters once
/// the fence is held: the reconciler saw it lost, but an operator's rebuild
/// may have restored it meanwhile, and a second one would unload a live sale
/// for its duration. `None` when nothing was to do.
pub async fn rebuild_if_lost(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<Option<(i64, i64)>, LoadError> {
    let mut tx = db.begin().await?;
    let fresh = db::events::lock_fresh(&mut *tx, event.id).await?;
    let state = redis.sale_state(event.id).await?;
    if state.loaded && state.held.is_some() {
        return Ok(None);
    }
    rebuild_fenced(db, redis, fresh.as_ref().unwrap_or(event), tx)
        .await
        .map(Some)
}

/// The rebuild's steps, with the event row already held by `tx`.
async fn rebuild_fenced(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<(i64, i64), LoadError> {
    redis.rebuild_begin(event.id).await?;
    let (mut settled, mut after) = (0, 0);
    loop {
        let users = db::orders::buyers_after(&mut *tx, event.id, after, PAGE as i64).await?;
        let Some(&last) = users.last() else {
            break;
        };
        let orders: Vec<PersistedOrder> = db::orders::of_buyers(&mut *tx, event.id, &users, None)
            .await?
            .into_iter()
            .map(|row| PersistedOrder {
                order_no: row.order_no,
                user_id: row.user_id,
                quantity: row.quantity,
                failed: row.failed,
            })
            .collect();
        let buyers = RebuiltBuyer::from_orders(&orders);
        settled += buyers.iter().map(|b| b.held).sum::<i64>();
        redis.rebuild_buyers(event.id, &buyers).await?;
        after = last;
    }
    // Refunded orders hold nothing in the rebuilt sale (the buyers step
    // listed them failed): their units are in the stock, now and for good.
    let mut after_order = uuid::Uuid::nil();
    loop {
        let page =
            db::refunds::order_nos_after(&mut *tx, event.id, after_order, PAGE as i64).await?;
        let Some(&last) = page.last() else {
            break;
        };
        redis.rebuild_returned(event.id, &page).await?;
        after_order = last;
    }
    db::refunds::mark_event_returned(&mut *tx, event.id).await?;
    // No order of this event commits while the row is held: the pool sees
    // what the transaction sees.
    let (kept, pending_units) = redis
        .rebuild_whole_ledger(event.id, |page| async move {
            let known = db::orders::failure_reasons(db, &page).await?;
            Ok::<_, LoadError>(
                page.into_iter()
                    .map(|o| (o, known.contains_key(&o)))
                    .collect(),
            )
        })
        .await?;
    let left = redis
        .rebuild_finish(event.id, sale_params(event), settled, pending_units)
        .await?;
    tx.commit().await?;
    Ok((left, kept))
}
