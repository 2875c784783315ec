//! The operator's changes to a sale: edit (versioned), pause and resume,
//! end now, and stock adjustments, each one fenced step.
//!
//! A fenced step holds the event row `FOR UPDATE` (the fence of
//! [`crate::loading`]: writer batches, rebuilds and other operator steps
//! wait), reads the event as the fence sees it, writes Redis with one script
//! (`sale.lua`, `adjust.lua`), writes Postgres, and commits. While the row
//! is held nothing else changes the sale, so Redis and Postgres move
//! together. A crash between the Redis write and the commit leaves Redis
//! ahead of Postgres, and the operator without an answer:
//!
//! - the sale's parameters: the reconciler puts Postgres's back into Redis
//!   ([`sync_params`]), as if the call had not been made;
//! - a stock adjustment: its row was committed as `pending` before Redis was
//!   touched, and `adjust.lua` remembers it applied, so the reconciler
//!   finishes it ([`settle_adjustment`]) with the outcome Redis recorded:
//!   applied exactly once in both. Meanwhile a writer whose batch holds
//!   units of a pending addition retries instead of failing them.
//!
//! What may change when (the README's "Sale lifecycle" has the table):
//! before the start everything; once started only the end of the window, the
//! pause and the stock; once ended nothing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    db::{
        self,
        adjustments::Adjustment,
        events::{Definition, Event},
        DbError,
    },
    intent::from_millis,
    loading::{self, sale_params},
    redis::{AdjustOutcome, Redis, RedisError},
};

/// Why an operator's change was not made.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("event not found")]
    NotFound,
    /// The event changed since the version the operator read.
    #[error("the event is at version {current}")]
    VersionConflict { current: i64 },
    /// A field that may not change once the sale started.
    #[error("{0} cannot change once the sale has started")]
    SaleStarted(&'static str),
    #[error("the sale has ended")]
    SaleEnded,
    /// A withdrawal of more than the unsold stock.
    #[error("only {stock_left} units are left unsold")]
    InsufficientStock { stock_left: i64 },
    /// Redis lost the sale and it is not rebuilt yet.
    #[error("the sale is being restored after a Redis loss; retry shortly")]
    NotLoaded,
    /// The same Idempotency-Key with a different request.
    #[error("idempotency key reused with a different request")]
    KeyReused,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for LifecycleError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err.into())
    }
}

/// Price × stock of one sale at most 2^53 − 1: every amount and every sum of
/// a sale is then exact in Lua's doubles and in i64 alike.
pub const MAX_SALE_VALUE: i64 = (1 << 53) - 1;
/// Most units one sale may hold.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// A versioned edit: the fields to change (`None`: keep).
#[derive(Clone, Debug, Default)]
pub struct Edit {
    pub version: i64,
    pub name: Option<String>,
    pub price: Option<i64>,
    pub per_user_limit: Option<i32>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// The new total stock; applied as an adjustment of the difference.
    pub stock: Option<i64>,
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Begins a fenced step: the event row held, as the transaction sees it.
async fn fence(db: &PgPool, id: i64) -> Result<(Tx, Event), LifecycleError> {
    let mut tx = db.begin().await?;
    let event = fence_in(&mut tx, id).await?;
    Ok((tx, event))
}

/// The fence in a transaction that already holds an adjustment's row (lock
/// order: the adjustment, then the event).
async fn fence_in(tx: &mut Tx, id: i64) -> Result<Event, LifecycleError> {
    db::events::lock_fresh(&mut **tx, id)
        .await?
        .ok_or(LifecycleError::NotFound)
}

fn definition(event: &Event) -> Definition<'_> {
    Definition {
        name: &event.name,
        price: event.price,
        per_user_limit: event.per_user_limit,
        starts_at: event.starts_at,
        ends_at: event.ends_at,
        paused_at: event.paused_at,
    }
}

/// Pauses (`paused`) or resumes a sale that has not ended. The flag is
/// set in Redis first, outside the fence, so purchases are refused at once
/// even while writer batches keep the event row busy; then the fenced step
/// records it (`paused_at`: that instant by Redis's clock) and loads the
/// whole sale again from Postgres, so concurrent calls converge on what
/// committed last. Once this returns, `purchase.lua` refuses every attempt
/// (resp. takes them again). Pausing a paused sale changes nothing.
pub async fn set_paused(
    db: &PgPool,
    redis: &Redis,
    id: i64,
    paused: bool,
) -> Result<Event, LifecycleError> {
    let seen = db::events::get(db, id)
        .await?
        .ok_or(LifecycleError::NotFound)?;
    if Utc::now() >= seen.ends_at {
        return Err(LifecycleError::SaleEnded);
    }
    if seen.paused_at.is_some() == paused {
        return Ok(seen);
    }
    let written = redis
        .pause_sale(loading::event_buckets(&seen), paused)
        .await?;
    let (mut tx, event) = fence(db, id).await?;
    let updated = if event.paused_at.is_some() == paused {
        event
    } else {
        let def = Definition {
            paused_at: paused.then(|| from_millis(written.now_ms)),
            ..definition(&event)
        };
        db::events::update_definition(&mut *tx, id, event.version, &def, 0)
            .await?
            .ok_or(LifecycleError::VersionConflict {
                current: event.version,
            })?
    };
    redis
        .set_sale(loading::event_buckets(&updated), sale_params(&updated))
        .await?;
    tx.commit().await?;
    Ok(updated)
}

/// Ends the sale now, by Redis's clock (the clock purchase.lua compares
/// with): `ends_at` becomes that instant in Redis and in Postgres. As for a
/// pause, Redis is written first, outside the fence, then the fenced step
/// records it and loads the sale again from Postgres. Returns the event
/// after and the instant. Ending an ended sale changes nothing.
pub async fn end_now(
    db: &PgPool,
    redis: &Redis,
    id: i64,
) -> Result<(Event, DateTime<Utc>), LifecycleError> {
    let seen = db::events::get(db, id)
        .await?
        .ok_or(LifecycleError::NotFound)?;
    let written = redis
        .end_sale(
            loading::event_buckets(&seen),
            seen.starts_at.timestamp_millis(),
            seen.ends_at.timestamp_millis(),
        )
        .await?;
    let (starts_at, ends_at) = (from_millis(written.starts_ms), from_millis(written.ends_ms));
    let (mut tx, event) = fence(db, id).await?;
    if ends_at >= event.ends_at {
        // Over already (by Redis's clock): nothing to change.
        return Ok((event.clone(), event.ends_at));
    }
    let def = Definition {
        starts_at: starts_at.min(event.starts_at),
        ends_at,
        ..definition(&event)
    };
    let updated = db::events::update_definition(&mut *tx, id, event.version, &def, 0)
        .await?
        .ok_or(LifecycleError::VersionConflict {
            current: event.version,
        })?;
    redis
        .set_sale(loading::event_buckets(&updated), sale_params(&updated))
        .await?;
    tx.commit().await?;
    Ok((updated, ends_at))
}

/// A versioned edit (see the module docs for what may change when). A stock
/// change is a stock adjustment of the difference, recorded and applied
/// like [`adjust`], in the same step as the rest of the edit.
pub async fn edit(
    db: &PgPool,
    redis: &Redis,
    id: i64,
    edit: &Edit,
) -> Result<Event, LifecycleError> {
    let seen = db::events::get(db, id)
        .await?
        .ok_or(LifecycleError::NotFound)?;
    if seen.version != edit.version {
        return Err(LifecycleError::VersionConflict {
            current: seen.version,
        });
    }
    // The adjustment's row is committed before Redis is touched (see the
    // module docs); refused below if the edit is.
    let adjustment = match edit.stock.map(|s| s - seen.stock_total) {
        Some(delta) if delta != 0 => {
            let reason = format!("edit of version {}", edit.version);
            db::adjustments::insert(db, id, delta, &reason, None).await?
        }
        _ => None,
    };
    let result = edit_fenced(db, redis, id, edit, adjustment.as_ref()).await;
    if let (Err(err), Some(adjustment)) = (&result, &adjustment) {
        refuse_if_pending(db, adjustment.id, err).await;
    }
    result
}

async fn edit_fenced(
    db: &PgPool,
    redis: &Redis,
    id: i64,
    edit: &Edit,
    adjustment: Option<&Adjustment>,
) -> Result<Event, LifecycleError> {
    let mut tx = db.begin().await?;
    if let Some(adjustment) = adjustment {
        // Settled meanwhile by the reconciler (the call waited longer than
        // its grace): the stock moved, so this edit is stale.
        let still = db::adjustments::lock(&mut *tx, adjustment.id).await?;
        if still.is_none_or(|a| a.state != "pending") {
            let current = db::events::get(db, id).await?.map_or(0, |e| e.version);
            return Err(LifecycleError::VersionConflict { current });
        }
    }
    let event = fence_in(&mut tx, id).await?;
    if event.version != edit.version {
        return Err(LifecycleError::VersionConflict {
            current: event.version,
        });
    }
    let now = Utc::now();
    if now >= event.ends_at {
        return Err(LifecycleError::SaleEnded);
    }
    let def = Definition {
        name: edit.name.as_deref().unwrap_or(&event.name),
        price: edit.price.unwrap_or(event.price),
        per_user_limit: edit.per_user_limit.unwrap_or(event.per_user_limit),
        starts_at: edit.starts_at.unwrap_or(event.starts_at),
        ends_at: edit.ends_at.unwrap_or(event.ends_at),
        paused_at: event.paused_at,
    };
    if now >= event.starts_at {
        // Started: the price of units already sold, the limit buyers were
        // held to and the start that is past stay as they are.
        let unchanged = [
            ("name", def.name == event.name),
            ("price", def.price == event.price),
            ("per_user_limit", def.per_user_limit == event.per_user_limit),
            ("starts_at", def.starts_at == event.starts_at),
        ];
        if let Some((field, _)) = unchanged.iter().find(|(_, same)| !same) {
            return Err(LifecycleError::SaleStarted(field));
        }
    }
    if def.ends_at <= def.starts_at {
        return Err(LifecycleError::Invalid(
            "ends_at must be after starts_at".into(),
        ));
    }
    if def.ends_at <= now {
        return Err(LifecycleError::Invalid(
            "ends_at must be in the future; POST /admin/events/{id}/end ends a sale now".into(),
        ));
    }
    let total = edit.stock.unwrap_or(event.stock_total);
    if def
        .price
        .checked_mul(total)
        .is_none_or(|v| v > MAX_SALE_VALUE)
    {
        return Err(LifecycleError::Invalid(format!(
            "price × stock must be at most {MAX_SALE_VALUE}, so every sum of the sale is exact"
        )));
    }
    let mut delta = 0;
    if let Some(adjustment) = adjustment {
        match apply_in_redis(redis, &event, adjustment).await? {
            Applied::Yes { .. } => delta = adjustment.delta,
            Applied::No(err) => return Err(err),
        }
    }
    let updated = db::events::update_definition(&mut *tx, id, event.version, &def, delta)
        .await?
        .ok_or(LifecycleError::VersionConflict {
            current: event.version,
        })?;
    redis
        .set_sale(loading::event_buckets(&updated), sale_params(&updated))
        .await?;
    if let Some(adjustment) = adjustment {
        let left = redis
            .event_stock_left(loading::event_buckets(&updated))
            .await?;
        db::adjustments::mark_applied(&mut *tx, adjustment.id, updated.stock_total, left).await?;
    }
    tx.commit().await?;
    Ok(updated)
}

/// Records a stock adjustment and applies it (see [`settle_adjustment`]).
/// With a `request_key`, a retried call answers what the first one did and
/// applies nothing twice. Returns the settled adjustment: `applied`, or
/// `refused` with its reason.
pub async fn adjust(
    db: &PgPool,
    redis: &Redis,
    id: i64,
    delta: i64,
    reason: &str,
    request_key: Option<&str>,
) -> Result<Adjustment, LifecycleError> {
    let event = db::events::get(db, id)
        .await?
        .ok_or(LifecycleError::NotFound)?;
    if let Some(key) = request_key {
        if let Some(earlier) = db::adjustments::by_key(db, id, key).await? {
            return replay(db, redis, earlier, delta, reason).await;
        }
    }
    if Utc::now() >= event.ends_at {
        return Err(LifecycleError::SaleEnded);
    }
    let total = event.stock_total.saturating_add(delta);
    if total > MAX_STOCK
        || event
            .price
            .checked_mul(total)
            .is_none_or(|v| v > MAX_SALE_VALUE)
    {
        return Err(LifecycleError::Invalid(format!(
            "the stock must stay at most {MAX_STOCK} and price × stock at most {MAX_SALE_VALUE}"
        )));
    }
    match db::adjustments::insert(db, id, delta, reason, request_key).await? {
        Some(adjustment) => settle(db, redis, adjustment.id, Wait::Yes)
            .await?
            .ok_or(LifecycleError::NotFound),
        // The same key, inserted meanwhile by a concurrent retry.
        None => {
            let key = request_key.unwrap_or_default();
            let earlier = db::adjustments::by_key(db, id, key)
                .await?
                .ok_or(LifecycleError::NotFound)?;
            replay(db, redis, earlier, delta, reason).await
        }
    }
}

async fn replay(
    db: &PgPool,
    redis: &Redis,
    earlier: Adjustment,
    delta: i64,
    reason: &str,
) -> Result<Adjustment, LifecycleError> {
    if earlier.delta != delta || earlier.reason != reason {
        return Err(LifecycleError::KeyReused);
    }
    if earlier.state == "pending" {
        return settle(db, redis, earlier.id, Wait::Yes)
            .await?
            .ok_or(LifecycleError::NotFound);
    }
    Ok(earlier)
}

/// Whether `adjust.lua` applied an adjustment.
enum Applied {
    Yes { stock_left: Option<i64> },
    No(LifecycleError),
}

/// The bucket a stock adjustment changes: the first (an event of several
/// buckets takes added units there, and withdraws at most what it has
/// left; transfers carry them on to the others as they sell).
pub fn adjusted_bucket(event: &Event) -> crate::redis::Bucket {
    loading::buckets(event)
        .next()
        .expect("an event has at least one bucket")
}

/// The Redis half of an adjustment, under the caller's fence: `adjust.lua`
/// on a loaded sale; on one never preheated, the Postgres total is all
/// there is (the preheat loads it).
async fn apply_in_redis(
    redis: &Redis,
    event: &Event,
    adjustment: &Adjustment,
) -> Result<Applied, LifecycleError> {
    Ok(
        match redis
            .adjust_stock(adjusted_bucket(event), adjustment.id, adjustment.delta)
            .await?
        {
            AdjustOutcome::Applied { stock_left, .. } => Applied::Yes {
                stock_left: Some(stock_left),
            },
            AdjustOutcome::Refused { stock_left, .. } => {
                Applied::No(LifecycleError::InsufficientStock { stock_left })
            }
            AdjustOutcome::NotLoaded if event.preheated_at.is_none() => {
                let unsold = event.stock_total - event.sold;
                if adjustment.delta < 0 && unsold < -adjustment.delta {
                    Applied::No(LifecycleError::InsufficientStock { stock_left: unsold })
                } else {
                    Applied::Yes { stock_left: None }
                }
            }
            AdjustOutcome::NotLoaded => Applied::No(LifecycleError::NotLoaded),
        },
    )
}

/// Whether to wait for an adjustment another transaction is settling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// The reconciler: skip it (the operator's call is settling it).
    No,
}

/// Settles an adjustment a crash left pending: as [`settle`], skipping one
/// that an operator's call is settling right now (`None`).
pub async fn settle_adjustment(
    db: &PgPool,
    redis: &Redis,
    adjustment_id: i64,
) -> Result<Option<Adjustment>, LifecycleError> {
    settle(db, redis, adjustment_id, Wait::No).await
}

/// Settles a pending adjustment, once, in one fenced step (the adjustment's
/// row, then the event's): `adjust.lua` (which answers a replay with the
/// outcome it recorded), then the row and `events.stock_total` in the same
/// commit. A settled one is returned as it is.
async fn settle(
    db: &PgPool,
    redis: &Redis,
    adjustment_id: i64,
    wait: Wait,
) -> Result<Option<Adjustment>, LifecycleError> {
    let mut tx = db.begin().await?;
    let locked = match wait {
        Wait::Yes => db::adjustments::lock(&mut *tx, adjustment_id).await?,
        Wait::No => db::adjustments::lock_unless_busy(&mut *tx, adjustment_id).await?,
    };
    let Some(adjustment) = locked else {
        return Ok(None);
    };
    if adjustment.state != "pending" {
        return Ok(Some(adjustment));
    }
    let event = fence_in(&mut tx, adjustment.event_id).await?;
    let settled = match apply_in_redis(redis, &event, &adjustment).await? {
        Applied::Yes { stock_left } => {
            let after = db::events::add_stock(&mut *tx, event.id, adjustment.delta).await?;
            db::adjustments::mark_applied(&mut *tx, adjustment.id, after.stock_total, stock_left)
                .await?
        }
        Applied::No(err) => {
            let (refusal, left) = refusal_of(&err);
            db::adjustments::mark_refused(&mut *tx, adjustment.id, refusal, left).await?
        }
    };
    tx.commit().await?;
    if settled.state == "applied" && settled.delta > 0 {
        redis.publish_stock_back(event.id).await?;
    }
    Ok(Some(settled))
}

/// The refusal recorded for an adjustment that was not applied.
fn refusal_of(err: &LifecycleError) -> (&'static str, Option<i64>) {
    match err {
        LifecycleError::InsufficientStock { stock_left } => {
            ("insufficient_stock", Some(*stock_left))
        }
        LifecycleError::NotLoaded => ("not_loaded", None),
        LifecycleError::VersionConflict { .. } => ("version_conflict", None),
        LifecycleError::SaleStarted(_) => ("sale_started", None),
        LifecycleError::SaleEnded => ("sale_ended", None),
        LifecycleError::Invalid(_) | LifecycleError::KeyReused => ("invalid_request", None),
        LifecycleError::NotFound => ("not_found", None),
        LifecycleError::Redis(_) | LifecycleError::Db(_) => ("unavailable", None),
    }
}

/// An edit that failed before its adjustment was applied: the adjustment is
/// refused, unless the failure left it unknown (Redis or Postgres down: the
/// reconciler settles it by what Redis recorded).
async fn refuse_if_pending(db: &PgPool, adjustment_id: i64, err: &LifecycleError) {
    if matches!(err, LifecycleError::Redis(_) | LifecycleError::Db(_)) {
        return;
    }
    let (refusal, left) = refusal_of(err);
    let result = async {
        let mut tx = db.begin().await?;
        if let Some(a) = db::adjustments::lock(&mut *tx, adjustment_id).await? {
            if a.state == "pending" {
                db::adjustments::mark_refused(&mut *tx, adjustment_id, refusal, left).await?;
            }
        }
        tx.commit().await?;
        Ok::<_, LifecycleError>(())
    };
    if let Err(err) = result.await {
        tracing::warn!(adjustment_id, error = %err, "could not mark an edit's adjustment refused; the reconciler will settle it");
    }
}

/// How Redis's sale parameters compare with Postgres's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamsSync {
    /// The same (or the sale is not loaded).
    InSync,
    /// They differed; Postgres's are loaded now.
    Corrected,
    /// Redis is only more closed than Postgres (paused, or ending earlier):
    /// what an end or a pause looks like between its Redis write and its
    /// commit. Left alone unless `revert_closing`.
    Closing,
}

fn compare(event: &Event, loaded: Option<crate::redis::LoadedParams>) -> ParamsSync {
    let want = sale_params(event);
    let Some(have) = loaded else {
        return ParamsSync::InSync;
    };
    let same_terms = have.price == want.price && have.per_user_limit == want.per_user_limit as i64;
    if same_terms
        && have.starts_ms == want.starts_ms
        && have.ends_ms == want.ends_ms
        && have.paused == want.paused
    {
        return ParamsSync::InSync;
    }
    let closing = same_terms
        && (have.paused || !want.paused)
        && have.ends_ms <= want.ends_ms
        && have.starts_ms <= want.starts_ms;
    if closing {
        ParamsSync::Closing
    } else {
        ParamsSync::Corrected
    }
}

/// [`compare`] over every bucket: the farthest from Postgres's decides.
async fn compare_buckets(redis: &Redis, event: &Event) -> Result<ParamsSync, LifecycleError> {
    let mut worst = ParamsSync::InSync;
    for bucket in loading::buckets(event) {
        match compare(event, redis.loaded_params(bucket).await?) {
            ParamsSync::Corrected => return Ok(ParamsSync::Corrected),
            ParamsSync::Closing => worst = ParamsSync::Closing,
            ParamsSync::InSync => {}
        }
    }
    Ok(worst)
}

/// Puts Postgres's sale parameters back into Redis when they differ (a crash
/// between an operator's Redis write and its commit, a Redis back from an
/// older state). Checked without the fence, written under it with the event
/// read again. A difference that only closes the sale more than Postgres
/// says is an end or a pause in flight: it is reverted only with
/// `revert_closing` (the reconciler, once it has outlasted any call).
pub async fn sync_params(
    db: &PgPool,
    redis: &Redis,
    id: i64,
    revert_closing: bool,
) -> Result<ParamsSync, LifecycleError> {
    let Some(event) = db::events::get(db, id).await? else {
        return Ok(ParamsSync::InSync);
    };
    let seen = compare_buckets(redis, &event).await?;
    if seen == ParamsSync::InSync || (seen == ParamsSync::Closing && !revert_closing) {
        return Ok(seen);
    }
    let (tx, event) = fence(db, id).await?;
    let now = compare_buckets(redis, &event).await?;
    if now == ParamsSync::InSync || (now == ParamsSync::Closing && !revert_closing) {
        return Ok(now);
    }
    redis
        .set_sale(loading::event_buckets(&event), sale_params(&event))
        .await?;
    tx.commit().await?;
    Ok(ParamsSync::Corrected)
}
