//! One batch of accepted purchases into Postgres, in one transaction.
//!
//! Persisting is idempotent, because writers retry and the reconciler replays:
//! orders insert `ON CONFLICT (order_no) DO NOTHING`, and only the rows this
//! transaction inserted are charged. Wallet debits are versioned UPDATEs
//! (`WHERE version = $v AND balance >= $amount`); a row that moved underneath
//! is a conflict, counted and retried with a fresh read. Everything goes in as
//! arrays (`UNNEST`), a statement per step, not per row (see `db/`).
//!
//! The same transaction writes the outbox row of the orders it inserted
//! (one per event, naming them; the relay publishes `order.confirmed` or
//! `order.failed` for each, see [`crate::outbox`]); a replayed order inserts
//! nothing, so it owes no second event.
//!
//! After commit the batch is settled in Redis ([`super::settle`]). A crash
//! between commit and settle leaves the intents pending; the reconciler finds
//! them in Postgres and settles them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{admission, settle::Settlement};
use crate::{
    db::{self, money::Debit, wallets::PlannedDebit, DbError},
    intent::{Intent, Settled, INSUFFICIENT_FUNDS, NO_WALLET, STOCK_LOST},
    redis::{Redis, RedisError},
};

/// How a batch ended, per order.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Inserted by this batch and charged.
    pub confirmed: Vec<Intent>,
    /// Inserted by this batch as failed (could not pay, stock lost), with the reason.
    pub failed: Vec<(Intent, &'static str)>,
    /// Already in Postgres (a replay): the intent and, if it failed, why.
    pub already: Vec<(Intent, Option<String>)>,
    pub version_conflicts: u32,
    /// Events whose Redis accepted more than the unsold stock, with the
    /// units Postgres has left unsold after this batch (see `within_stock`).
    pub oversold: Vec<(i64, i64)>,
}

impl BatchResult {
    /// Every order of the batch, with its event and how it ended.
    pub fn settlements(&self) -> Vec<Settlement> {
        let confirmed = self.confirmed.iter().map(|i| (i, None));
        let failed = self
            .failed
            .iter()
            .map(|(i, reason)| (i, Some(reason.to_string())));
        let already = self.already.iter().map(|(i, reason)| (i, reason.clone()));
        confirmed
            .chain(failed)
            .chain(already)
            .map(|(intent, failure)| Settlement {
                bucket: intent.bucket(),
                event_id: intent.event_id,
                order_no: intent.order_no,
                settled: failure.map_or(Settled::Confirmed, Settled::Failed),
            })
            .collect()
    }
}

/// Most conflict rounds one batch tolerates before it is rolled back and retried whole.
const MAX_CONFLICT_ROUNDS: u32 = 64;

/// A batch that did not persist.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Redis sold units of a stock addition Postgres has not recorded yet
    /// (a crash left the adjustment pending; the reconciler settles it
    /// within a second or so): retried, never failed as `stock_lost`.
    #[error("event {0} has a stock addition pending; the batch waits for it")]
    AdjustmentPending(i64),
}

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err.into())
    }
}

impl WriteError {
    /// Worth retrying: Redis trouble, or a transient Postgres error. A
    /// constraint violation is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(err) => err.is_transient(),
            Self::Redis(_) | Self::AdjustmentPending(_) => true,
        }
    }
}

/// Persists a batch in one transaction. The caller retries transient errors.
///
/// The transaction first takes `FOR KEY SHARE` on its events' rows, then
/// (given Redis) admits the batch (see [`admission`]): intents whose stock a
/// Redis restart lost are taken again or refused (persisted failed,
/// uncharged). A rebuild or a preheat of an event takes `FOR UPDATE` on the
/// row, so no batch commits across one: it is counted by it, or admitted
/// after it. Writers do not block each other on these locks (KEY SHARE and
/// the `sold` UPDATE's NO KEY UPDATE are compatible).
pub async fn persist_batch(
    pool: &PgPool,
    batch: &[Intent],
    admission: Option<&Redis>,
) -> Result<BatchResult, WriteError> {
    let mut batch = batch.to_vec();
    // One lock order for every transaction: fewer deadlocks between writers.
    batch.sort_by_key(|i| (i.user_id, i.order_no));
    batch.dedup_by_key(|i| i.order_no);

    let mut tx = pool.begin().await?;
    let mut event_ids: Vec<i64> = batch.iter().map(|i| i.event_id).collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    let unsold = db::events::share_for_batch(&mut *tx, &event_ids).await?;
    // The orders' events exist, and stay while this transaction holds their
    // rows (checked here once, not by a foreign key per order).
    if let Some(&missing) = event_ids.iter().find(|e| !unsold.contains_key(e)) {
        return Err(DbError::UnknownEvent(missing).into());
    }
    let refused = match admission {
        Some(redis) => admission::refused(redis, &batch).await?,
        None => HashSet::new(),
    };
    let inserted = db::orders::insert_confirmed(&mut *tx, &batch).await?;
    let mut result = BatchResult::default();
    let (fresh, replayed): (Vec<Intent>, Vec<Intent>) =
        batch.iter().partition(|i| inserted.contains(&i.order_no));
    if !replayed.is_empty() {
        let order_nos: Vec<Uuid> = replayed.iter().map(|i| i.order_no).collect();
        let reasons = db::orders::failure_reasons(&mut *tx, &order_nos).await?;
        result.already = replayed
            .into_iter()
            .map(|i| (i, reasons.get(&i.order_no).cloned().flatten()))
            .collect();
    }

    let (payable, mut lost): (Vec<Intent>, Vec<Intent>) =
        fresh.iter().partition(|i| !refused.contains(&i.order_no));
    let (payable, oversold, unsold_after) = within_stock(payable, unsold);
    if !oversold.is_empty() {
        let mut events: Vec<i64> = oversold.iter().map(|i| i.event_id).collect();
        events.sort_unstable();
        events.dedup();
        if let Some(&event_id) = db::adjustments::with_pending_addition(&mut *tx, &events)
            .await?
            .first()
        {
            return Err(WriteError::AdjustmentPending(event_id));
        }
    }
    if !oversold.is_empty() {
        let mut events: Vec<i64> = oversold.iter().map(|i| i.event_id).collect();
        events.sort_unstable();
        events.dedup();
        result.oversold = events.into_iter().map(|e| (e, unsold_after[&e])).collect();
    }
    lost.extend(oversold);
    let (debits, mut failed, conflicts) = debit_wallets(&mut tx, &payable).await?;
    failed.extend(lost.iter().map(|i| (i.order_no, STOCK_LOST)));
    result.version_conflicts = conflicts;
    db::money::insert(&mut tx, &debits).await?;
    db::orders::mark_failed(&mut *tx, &failed).await?;
    // The orders' events for the broker, committed with them (one row per
    // event; the relay reads each order's state back from its row), before
    // the `sold` UPDATE so the event row's lock is held no longer.
    let inserted: Vec<(i64, Uuid)> = fresh.iter().map(|i| (i.event_id, i.order_no)).collect();
    db::outbox::record_batch(&mut *tx, &inserted).await?;
    let mut sold: BTreeMap<i64, i64> = BTreeMap::new();
    for intent in fresh.iter().filter(|i| !failed.contains_key(&i.order_no)) {
        *sold.entry(intent.event_id).or_default() += intent.quantity as i64;
    }
    db::events::add_sold(&mut tx, &sold).await?;
    tx.commit().await?;

    for intent in fresh {
        match failed.get(&intent.order_no) {
            Some(reason) => result.failed.push((intent, *reason)),
            None => result.confirmed.push(intent),
        }
    }
    Ok(result)
}

/// Keeps, per event, the intents that fit in its unsold stock (oldest
/// acceptance first); returns (fitting, over, unsold after the fitting ones).
///
/// Redis never accepts more than the stock, so normally everything fits. A
/// Redis that came back with an older state (a snapshot, a lagging replica)
/// counts stock that Postgres has sold since: what it oversold is persisted
/// failed (`stock_lost`), uncharged, instead of breaking `sold <= stock_total`
/// and staying unpersisted, and Redis's stock is capped at what Postgres has
/// left unsold (see `settle`). Two writers that both fit against the same
/// `sold` meet at that CHECK; the loser retries the batch with a fresh read.
fn within_stock(
    mut intents: Vec<Intent>,
    mut unsold: HashMap<i64, i64>,
) -> (Vec<Intent>, Vec<Intent>, HashMap<i64, i64>) {
    intents.sort_by_key(|i| (i.accepted_at, i.order_no));
    let (fit, over): (Vec<Intent>, Vec<Intent>) = intents.into_iter().partition(|i| {
        let left = unsold.entry(i.event_id).or_default();
        let fits = *left >= i.quantity as i64;
        if fits {
            *left -= i.quantity as i64;
        }
        fits
    });
    if !over.is_empty() {
        tracing::warn!(
            oversold = over.len(),
            "redis accepted more than the unsold stock (an older redis state?); persisted as stock_lost"
        );
        metrics::counter!("seckill_intents_oversold_total").increment(over.len() as u64);
    }
    (fit, over, unsold)
}

/// Debits every fresh order's wallet with versioned UPDATEs.
///
/// Each round sends at most one order per user (so every applied debit moves
/// that wallet's version by exactly one); users with several orders in the
/// batch take several rounds. Returns the debits, the failed orders with
/// their reason, and the conflicts met.
async fn debit_wallets(
    conn: &mut PgConnection,
    fresh: &[Intent],
) -> Result<(Vec<Debit>, HashMap<Uuid, &'static str>, u32), DbError> {
    let mut queues: BTreeMap<i64, VecDeque<&Intent>> = BTreeMap::new();
    for intent in fresh {
        queues.entry(intent.user_id).or_default().push_back(intent);
    }
    let users: Vec<i64> = queues.keys().copied().collect();
    let mut wallets = db::wallets::states(&mut *conn, &users).await?;
    let mut debits = Vec::with_capacity(fresh.len());
    let mut failed = HashMap::new();
    let mut conflicts = 0u32;
    let mut rounds_with_conflicts = 0u32;

    loop {
        // Plan this round: the head order of every user that can pay it.
        let mut plan: Vec<&Intent> = Vec::new();
        let mut planned: Vec<PlannedDebit> = Vec::new();
        for (user_id, queue) in queues.iter_mut() {
            while let Some(intent) = queue.front() {
                match wallets.get(user_id) {
                    None => {
                        failed.insert(intent.order_no, NO_WALLET);
                        queue.pop_front();
                    }
                    Some(&(balance, _)) if balance < intent.amount => {
                        failed.insert(intent.order_no, INSUFFICIENT_FUNDS);
                        queue.pop_front();
                    }
                    Some(&(_, version)) => {
                        plan.push(intent);
                        planned.push(PlannedDebit {
                            user_id: *user_id,
                            amount: intent.amount,
                            version,
                        });
                        break;
                    }
                }
            }
        }
        queues.retain(|_, q| !q.is_empty());
        if plan.is_empty() {
            return Ok((debits, failed, conflicts));
        }

        let applied: HashMap<i64, (i64, i64)> = db::wallets::debit_versioned(&mut *conn, &planned)
            .await?
            .into_iter()
            .map(|(u, b, v)| (u, (b, v)))
            .collect();
        let mut stale = Vec::new();
        for intent in plan {
            match applied.get(&intent.user_id) {
                Some(&(balance, version)) => {
                    debits.push(Debit {
                        order_no: intent.order_no,
                        event_id: intent.event_id,
                        user_id: intent.user_id,
                        amount: intent.amount,
                        balance_after: balance,
                        version_after: version,
                    });
                    wallets.insert(intent.user_id, (balance, version));
                    if let Some(q) = queues.get_mut(&intent.user_id) {
                        q.pop_front();
                    }
                }
                None => stale.push(intent.user_id),
            }
        }
        if !stale.is_empty() {
            // Someone else moved these wallets: count, re-read, try again.
            conflicts += stale.len() as u32;
            metrics::counter!("seckill_version_conflicts_total").increment(stale.len() as u64);
            rounds_with_conflicts += 1;
            if rounds_with_conflicts > MAX_CONFLICT_ROUNDS {
                return Err(DbError::TooManyConflicts(conflicts));
            }
            for user_id in &stale {
                wallets.remove(user_id);
            }
            wallets.extend(db::wallets::states(&mut *conn, &stale).await?);
        }
    }
}
