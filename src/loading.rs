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
    redis::{state::PAGE, Bucket, PersistedOrder, RebuiltBuyer, Redis, RedisError, SaleParams},
};

/// How many stock buckets the event has (1..=[`crate::redis::MAX_BUCKETS`]).
pub fn bucket_count(event: &Event) -> u16 {
    event
        .stock_buckets
        .clamp(1, crate::redis::MAX_BUCKETS as i32) as u16
}

/// The event's buckets, for the Redis steps over a whole event.
pub fn event_buckets(event: &Event) -> crate::redis::Buckets {
    crate::redis::Buckets::new(event.id, bucket_count(event))
}

/// Every stock bucket of the event.
pub fn buckets(event: &Event) -> impl Iterator<Item = Bucket> {
    Bucket::all(event.id, bucket_count(event))
}

/// A shopper's home bucket in the event.
pub fn home_bucket(event: &Event, user_id: i64) -> Bucket {
    Bucket::home(event.id, bucket_count(event), user_id)
}

/// The units a first preheat gives each bucket: an even split, the
/// remainder one each to the first buckets.
pub fn first_share(total: i64, bucket: Bucket) -> i64 {
    let of = bucket.of as i64;
    total / of + i64::from((bucket.index as i64) < total % of)
}

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
    let mut missing = Vec::new();
    for bucket in buckets(event) {
        if !redis.is_loaded(bucket).await? {
            missing.push(bucket);
        }
    }
    if !missing.is_empty() && db::orders::count_for_event(&mut *tx, event.id).await? > 0 {
        return Err(LoadError::HasOrders);
    }
    let mut loaded = false;
    for bucket in missing {
        let mut params = sale_params(event);
        params.stock_total = first_share(event.stock_total, bucket);
        loaded |= redis.preheat(bucket, params).await?;
    }
    tx.commit().await?;
    Ok(loaded)
}

/// Replaces an event's Redis state with Postgres truth plus the intents
/// Redis still holds, in bounded steps: the buyers a Postgres page at a time,
/// then the ledger a page at a time. The sale is unloaded meanwhile
/// (purchases answer `not_active`). Every bucket of the event is rebuilt.
/// Returns (stock_left, intents kept).
pub async fn rebuild(db: &PgPool, redis: &Redis, event: &Event) -> Result<(i64, i64), LoadError> {
    let mut tx = db.begin().await?;
    let fresh = db::events::lock_fresh(&mut *tx, event.id).await?;
    let event = fresh.as_ref().unwrap_or(event);
    let all: Vec<Bucket> = buckets(event).collect();
    rebuild_fenced(db, redis, event, &all, tx).await
}

/// [`rebuild`] of the buckets Redis still lacks (or holds without their
/// counters) once the fence is held: the reconciler saw them lost, but an
/// operator's rebuild may have restored them meanwhile, and a second one
/// would unload a live sale for its duration. `None` when nothing was to do.
pub async fn rebuild_if_lost(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<Option<(i64, i64)>, LoadError> {
    let mut tx = db.begin().await?;
    let fresh = db::events::lock_fresh(&mut *tx, event.id).await?;
    let event = fresh.as_ref().unwrap_or(event);
    let mut lost = Vec::new();
    for bucket in buckets(event) {
        if !redis.sale_state(bucket).await?.intact() {
            lost.push(bucket);
        }
    }
    if lost.is_empty() {
        return Ok(None);
    }
    rebuild_fenced(db, redis, event, &lost, tx).await.map(Some)
}

/// One lost bucket's buyers, refunds and ledger, rebuilt; what its shoppers
/// hold: (units of Postgres's non-failed orders, units pending, intents kept).
async fn rebuild_bucket_contents(
    db: &PgPool,
    redis: &Redis,
    bucket: Bucket,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<(i64, i64, i64), LoadError> {
    let event_id = bucket.event_id;
    redis.rebuild_begin(bucket).await?;
    let (mut settled, mut after) = (0, 0);
    loop {
        let users = db::orders::buyers_after(&mut **tx, bucket, after, PAGE as i64).await?;
        let Some(&last) = users.last() else {
            break;
        };
        let orders: Vec<PersistedOrder> = db::orders::of_buyers(&mut **tx, event_id, &users, None)
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
        redis.rebuild_buyers(bucket, &buyers).await?;
        after = last;
    }
    // Refunded orders hold nothing in the rebuilt sale (the buyers step
    // listed them failed): their units are in the stock, now and for good.
    let mut after_order = uuid::Uuid::nil();
    loop {
        let page =
            db::refunds::order_nos_after(&mut **tx, bucket, after_order, PAGE as i64).await?;
        let Some(&last) = page.last() else {
            break;
        };
        redis.rebuild_returned(bucket, &page).await?;
        after_order = last;
    }
    // No order of this event commits while the row is held: the pool sees
    // what the transaction sees.
    let (kept, pending_units) = redis
        .rebuild_whole_ledger(bucket, |page| async move {
            let known = db::orders::failure_reasons(db, &page).await?;
            Ok::<_, LoadError>(
                page.into_iter()
                    .map(|o| (o, known.contains_key(&o)))
                    .collect(),
            )
        })
        .await?;
    Ok((settled, pending_units, kept))
}

/// The rebuild's steps, with the event row already held by `tx`.
///
/// A lost bucket's total (the units it is accountable for) is what the
/// event's total leaves once the surviving buckets' totals and the units in
/// flight from them are counted: each lost bucket gets what its shoppers
/// hold, and the rest is shared evenly among the lost ones. The survivors
/// are read until two reads in a row agree on every bucket's
/// `transfer_seq` (no transfer moved between them). A transfer a survivor
/// recorded towards a lost bucket stays in flight, excluded from the share,
/// and lands once the bucket is loaded again (the reconciler's transfer
/// step). A lost bucket's own transfer records go with it: their units are
/// in what the event's total leaves.
async fn rebuild_fenced(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
    lost: &[Bucket],
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<(i64, i64), LoadError> {
    for &bucket in lost {
        redis.forget_transfers(bucket).await?;
    }
    let survivors: Vec<Bucket> = buckets(event).filter(|b| !lost.contains(b)).collect();
    let accounted_elsewhere = accounted_units(redis, &survivors).await?;
    let mut held = Vec::with_capacity(lost.len());
    for &bucket in lost {
        held.push(rebuild_bucket_contents(db, redis, bucket, &mut tx).await?);
    }
    db::refunds::mark_event_returned(&mut *tx, event.id).await?;
    let holding: i64 = held
        .iter()
        .map(|(settled, pending, _)| settled + pending)
        .sum();
    let spare = (event.stock_total - accounted_elsewhere - holding).max(0);
    let (mut left, mut kept) = (0, 0);
    for (i, (&bucket, &(settled, pending_units, intents))) in lost.iter().zip(&held).enumerate() {
        let share = first_share(spare, Bucket::new(event.id, i as u16, lost.len() as u16));
        // The whole sale on one bucket keeps the event's total (rebuild.lua
        // refuses one with more sold than stocked).
        let mut params = sale_params(event);
        if lost.len() > 1 || !survivors.is_empty() {
            params.stock_total = settled + pending_units + share;
        }
        left += redis
            .rebuild_finish(bucket, params, settled, pending_units)
            .await?;
        kept += intents;
    }
    tx.commit().await?;
    Ok((left, kept))
}

/// Units the buckets account for: their totals and what they gave away
/// that has not landed. Read until two reads agree on every bucket's
/// `transfer_seq`, so no transfer moved in between.
async fn accounted_units(redis: &Redis, buckets: &[Bucket]) -> Result<i64, LoadError> {
    // As many reads as it takes: this runs under the event's fence.
    let states = redis
        .bucket_states_between_transfers(buckets, usize::MAX)
        .await?
        .expect("reads end only when two agree");
    Ok(states.iter().map(|s| s.total + s.in_flight).sum())
}

/// What [`settle_bucket_totals`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotalsSettled {
    /// Units the buckets accounted for (totals and units in flight).
    pub accounted: i64,
    pub stock_total: i64,
    /// Units put back (positive) or taken off sale (negative).
    pub applied: i64,
    /// Units of total moved between buckets that did not balance in
    /// opposite directions.
    pub rebalanced: i64,
}

/// The buckets' totals with the units in flight between them must make the
/// event's `stock_total`. A Redis failover to a replica that missed a
/// transfer step (or a bucket lost in the middle of one) breaks that: units
/// missing are put back into the first bucket, units too many are taken off
/// sale from the buckets that hold stock (as far as unsold stock allows).
/// Checked without the fence first (every pass, O(buckets)); confirmed and
/// corrected under it (no adjustment or rebuild runs meanwhile, and the
/// buckets are read until two reads agree, so no transfer moved between
/// them; purchases, releases and refunds never change a total). `None`
/// when they agree, a bucket is not loaded, or an adjustment is pending.
pub async fn settle_bucket_totals(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<Option<TotalsSettled>, LoadError> {
    let all: Vec<Bucket> = buckets(event).collect();
    if all.len() == 1 {
        return Ok(None);
    }
    // The check every pass: one read of each bucket.
    let mut accounted = 0;
    let mut balanced = true;
    for &bucket in &all {
        let state = redis.bucket_state(bucket).await?;
        if !state.intact() {
            return Ok(None);
        }
        accounted += state.total + state.in_flight;
        balanced &= state.stock_left.unwrap_or(0) + state.held.unwrap_or(0) == state.total;
    }
    if accounted == event.stock_total && balanced {
        return Ok(None);
    }
    let mut tx = db.begin().await?;
    let Some(event) = db::events::lock_fresh(&mut *tx, event.id).await? else {
        return Ok(None);
    };
    if db::adjustments::pending_for_event(&mut *tx, event.id).await? > 0
        || !all_loaded(redis, &all).await?
    {
        return Ok(None);
    }
    let accounted = accounted_units(redis, &all).await?;
    let mut missing = event.stock_total - accounted;
    let (mut applied, mut rebalanced) = (0, 0);
    // First the totals of buckets that do not balance in the same
    // direction: a bucket whose stock and shoppers' units fall short of
    // its total while the buckets account for too many (units a lost
    // "out" made were sold, then found to be none and discarded) has its
    // total lowered; one whose stock and units exceed its total while the
    // buckets account for too few has it raised. Its stock stays.
    for &bucket in &all {
        if missing == 0 {
            break;
        }
        let seen = redis.sale_state(bucket).await?;
        let (Some(stock), Some(held)) = (seen.stock_left, seen.held) else {
            continue;
        };
        let excess = stock + held - seen.total;
        let change = if missing < 0 && excess < 0 {
            excess.max(missing)
        } else if missing > 0 && excess > 0 {
            excess.min(missing)
        } else {
            continue;
        };
        if !redis
            .set_bucket_total(bucket, &seen, seen.total + change)
            .await?
        {
            // The bucket moved: what is missing is not known any more.
            tx.commit().await?;
            return Ok(Some(TotalsSettled {
                accounted,
                stock_total: event.stock_total,
                applied,
                rebalanced,
            }));
        }
        missing -= change;
        applied += change;
    }
    // Buckets that do not balance in opposite directions (one holds units
    // beyond its total, another falls short of its own: a transfer step
    // lost between them) cancel out in the event's sums, where no drift
    // shows: the units are where they are, so their totals follow them.
    if missing == 0 {
        let mut seen = Vec::with_capacity(all.len());
        for &bucket in &all {
            let state = redis.sale_state(bucket).await?;
            if let (Some(stock), Some(held)) = (state.stock_left, state.held) {
                seen.push((bucket, state, stock + held - state.total));
            }
        }
        let mut over: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].2 > 0).collect();
        let mut short: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].2 < 0).collect();
        while let (Some(&o), Some(&u)) = (over.last(), short.last()) {
            let d = seen[o].2.min(-seen[u].2);
            let (ob, os, _) = seen[o];
            let (ub, us, _) = seen[u];
            if !redis.set_bucket_total(ob, &os, os.total + d).await?
                || !redis.set_bucket_total(ub, &us, us.total - d).await?
            {
                // Moved meanwhile (the first write may have landed: the
                // next pass sees the sums off and settles them).
                break;
            }
            rebalanced += d;
            seen[o].1.total += d;
            seen[o].2 -= d;
            seen[u].1.total -= d;
            seen[u].2 += d;
            if seen[o].2 == 0 {
                over.pop();
            }
            if seen[u].2 == 0 {
                short.pop();
            }
        }
    }
    // Then units: missing ones back on sale in the first bucket, too many
    // taken off sale from the buckets that hold stock. Once-only marks in
    // the bucket's meta, as for an operator's adjustment (negative ids:
    // never an operator's).
    let mark = -chrono::Utc::now().timestamp_micros();
    if missing > 0 {
        if let crate::redis::AdjustOutcome::Applied { .. } =
            redis.adjust_stock(all[0], mark, missing).await?
        {
            applied += missing;
            missing = 0;
        }
    }
    for (i, &bucket) in all.iter().enumerate() {
        if missing >= 0 {
            break;
        }
        let left = redis.stock_left(bucket).await?.unwrap_or(0);
        let take = left.min(-missing);
        if take <= 0 {
            continue;
        }
        if let crate::redis::AdjustOutcome::Applied { .. } = redis
            .adjust_stock(bucket, mark - 1 - i as i64, -take)
            .await?
        {
            missing += take;
            applied -= take;
        }
    }
    tx.commit().await?;
    Ok(Some(TotalsSettled {
        accounted,
        stock_total: event.stock_total,
        applied,
        rebalanced,
    }))
}

async fn all_loaded(redis: &Redis, all: &[Bucket]) -> Result<bool, LoadError> {
    for &bucket in all {
        if !redis.sale_state(bucket).await?.intact() {
            return Ok(false);
        }
    }
    Ok(true)
}
