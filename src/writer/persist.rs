//! One batch of accepted purchases into Postgres, in one transaction, then
//! settled in Redis.
//!
//! Persisting is idempotent, because writers retry and the reconciler replays:
//! orders insert `ON CONFLICT (order_no) DO NOTHING`, and only the rows this
//! transaction inserted are charged. Wallet debits are versioned UPDATEs
//! (`WHERE version = $v AND balance >= $amount`); a row that moved underneath
//! is a conflict, counted and retried with a fresh read. Everything goes in as
//! arrays (`UNNEST`), a statement per step, not per row.
//!
//! After commit the batch is settled in Redis: confirmed intents are acked
//! (leave the ledger), failed ones go through `release.lua`, which returns
//! their stock exactly once. A crash between commit and settle leaves the
//! intents pending; the reconciler finds them in Postgres and settles them.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

pub use crate::intent::Intent;
use crate::{
    db::DbError,
    redis::{Admission, Redis, RedisError},
};

/// Why an order failed; stored in `orders.failure_reason`.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
pub const NO_WALLET: &str = "no_wallet";
/// Accepted by a Redis that then lost it (restart without persistence), and
/// no stock was left to take again after the rebuild.
pub const STOCK_LOST: &str = "stock_lost";
/// A keyed retry resumed an attempt that had no answer, and Redis refused it:
/// the order is void, so a copy of it still in flight can never confirm it.
pub const NOT_ACCEPTED: &str = "not_accepted";

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
    /// Every order of the batch with how it ended.
    pub fn outcomes(&self) -> impl Iterator<Item = (Uuid, Settled)> + '_ {
        let confirmed = self
            .confirmed
            .iter()
            .map(|i| (i.order_no, Settled::Confirmed));
        let failed = self
            .failed
            .iter()
            .map(|(i, reason)| (i.order_no, Settled::Failed(reason.to_string())));
        let already = self.already.iter().map(|(i, reason)| {
            (
                i.order_no,
                reason.clone().map_or(Settled::Confirmed, Settled::Failed),
            )
        });
        confirmed.chain(failed).chain(already)
    }
}

/// How a persisted order ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Confirmed,
    /// Failed, with the reason stored in `orders.failure_reason`.
    Failed(String),
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
            Self::Redis(_) => true,
        }
    }
}

/// Persists a batch in one transaction. The caller retries transient errors.
///
/// The transaction first takes `FOR KEY SHARE` on its events' rows, then
/// (given Redis) admits the batch (see `admit`): intents whose stock a Redis
/// restart lost are taken again or refused (persisted failed, uncharged). A
/// rebuild of an event's Redis state takes `FOR UPDATE` on the row, so no batch
/// commits across a rebuild: it is counted by it, or admitted after it.
/// Writers do not block each other on these locks (KEY SHARE and the
/// `sold` UPDATE's NO KEY UPDATE are compatible).
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
    let unsold: HashMap<i64, i64> = sqlx::query_as(
        "SELECT id, stock_total - sold FROM events WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
    )
    .bind(&event_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let refused = match admission {
        Some(redis) => admit(redis, &batch).await?,
        None => HashSet::new(),
    };
    let inserted = insert_orders(&mut tx, &batch).await?;
    let mut result = BatchResult::default();
    let mut fresh = Vec::with_capacity(inserted.len());
    let mut replayed = Vec::new();
    for intent in &batch {
        if inserted.contains(&intent.order_no) {
            fresh.push(*intent);
        } else {
            replayed.push(intent.order_no);
        }
    }
    if !replayed.is_empty() {
        let rows: Vec<(Uuid, Option<String>)> =
            sqlx::query_as("SELECT order_no, failure_reason FROM orders WHERE order_no = ANY($1)")
                .bind(&replayed)
                .fetch_all(&mut *tx)
                .await?;
        let reasons: HashMap<Uuid, Option<String>> = rows.into_iter().collect();
        for intent in batch.iter().filter(|i| !inserted.contains(&i.order_no)) {
            let reason = reasons.get(&intent.order_no).cloned().flatten();
            result.already.push((*intent, reason));
        }
    }

    let (payable, mut lost): (Vec<Intent>, Vec<Intent>) =
        fresh.iter().partition(|i| !refused.contains(&i.order_no));
    let (payable, oversold, unsold_after) = within_stock(payable, unsold);
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
    insert_money_rows(&mut tx, &fresh, &debits).await?;
    mark_failed(&mut tx, &failed).await?;
    bump_sold(&mut tx, &fresh, &failed).await?;
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
/// acceptance first); returns (fitting, over).
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

async fn insert_orders(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[Intent],
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, created_at)
         SELECT o, e, u, q, a, 'confirmed', c FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::timestamptz[]) AS t(o, e, u, q, a, c)
         ON CONFLICT (order_no) DO NOTHING
         RETURNING order_no",
    )
    .bind(batch.iter().map(|i| i.order_no).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.event_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.user_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.quantity).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.amount).collect::<Vec<_>>())
    .bind(batch.iter().map(|i| i.accepted_at).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(o,)| o).collect())
}

/// A debit applied by this transaction.
struct Debit {
    order_no: Uuid,
    user_id: i64,
    amount: i64,
    balance_after: i64,
    version_after: i64,
}

#[derive(Clone, Copy)]
struct WalletState {
    balance: i64,
    version: i64,
}

/// Debits every fresh order's wallet with versioned UPDATEs.
///
/// Each round sends at most one order per user (so every applied debit moves
/// that wallet's version by exactly one); users with several orders in the
/// batch take several rounds. Returns the debits, the failed orders with
/// their reason, and the conflicts met.
async fn debit_wallets(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[Intent],
) -> Result<(Vec<Debit>, HashMap<Uuid, &'static str>, u32), DbError> {
    let mut queues: BTreeMap<i64, std::collections::VecDeque<&Intent>> = BTreeMap::new();
    for intent in fresh {
        queues.entry(intent.user_id).or_default().push_back(intent);
    }
    let mut wallets = read_wallets(tx, &queues.keys().copied().collect::<Vec<_>>()).await?;
    let mut debits = Vec::with_capacity(fresh.len());
    let mut failed = HashMap::new();
    let mut conflicts = 0u32;
    let mut rounds_with_conflicts = 0u32;

    loop {
        // Plan this round: the head order of every user that can pay it.
        let mut plan: Vec<(&Intent, WalletState)> = Vec::new();
        for (user_id, queue) in queues.iter_mut() {
            while let Some(intent) = queue.front() {
                match wallets.get(user_id) {
                    None => {
                        failed.insert(intent.order_no, NO_WALLET);
                        queue.pop_front();
                    }
                    Some(w) if w.balance < intent.amount => {
                        failed.insert(intent.order_no, INSUFFICIENT_FUNDS);
                        queue.pop_front();
                    }
                    Some(w) => {
                        plan.push((intent, *w));
                        break;
                    }
                }
            }
        }
        queues.retain(|_, q| !q.is_empty());
        if plan.is_empty() {
            return Ok((debits, failed, conflicts));
        }

        let applied: Vec<(i64, i64, i64)> = sqlx::query_as(
            "UPDATE wallets AS w SET balance = w.balance - d.amount, version = w.version + 1, updated_at = now()
             FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS d(user_id, amount, version)
             WHERE w.user_id = d.user_id AND w.version = d.version AND w.balance >= d.amount
             RETURNING w.user_id, w.balance, w.version",
        )
        .bind(plan.iter().map(|(i, _)| i.user_id).collect::<Vec<_>>())
        .bind(plan.iter().map(|(i, _)| i.amount).collect::<Vec<_>>())
        .bind(plan.iter().map(|(_, w)| w.version).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;

        let applied: HashMap<i64, (i64, i64)> =
            applied.into_iter().map(|(u, b, v)| (u, (b, v))).collect();
        let mut stale = Vec::new();
        for (intent, _) in &plan {
            match applied.get(&intent.user_id) {
                Some(&(balance, version)) => {
                    debits.push(Debit {
                        order_no: intent.order_no,
                        user_id: intent.user_id,
                        amount: intent.amount,
                        balance_after: balance,
                        version_after: version,
                    });
                    wallets.insert(intent.user_id, WalletState { balance, version });
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
            wallets.extend(read_wallets(tx, &stale).await?);
        }
    }
}

async fn read_wallets(
    tx: &mut Transaction<'_, Postgres>,
    users: &[i64],
) -> Result<HashMap<i64, WalletState>, DbError> {
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT user_id, balance, version FROM wallets WHERE user_id = ANY($1)")
            .bind(users)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(u, balance, version)| (u, WalletState { balance, version }))
        .collect())
}

async fn insert_money_rows(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[Intent],
    debits: &[Debit],
) -> Result<(), DbError> {
    if debits.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO wallet_debits (order_no, user_id, amount, balance_after, version_after)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])",
    )
    .bind(debits.iter().map(|d| d.order_no).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.user_id).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.amount).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.balance_after).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.version_after).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let event_of: HashMap<Uuid, i64> = fresh.iter().map(|i| (i.order_no, i.event_id)).collect();
    sqlx::query(
        "INSERT INTO payments (order_no, event_id, user_id, amount)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[])",
    )
    .bind(debits.iter().map(|d| d.order_no).collect::<Vec<_>>())
    .bind(
        debits
            .iter()
            .map(|d| event_of[&d.order_no])
            .collect::<Vec<_>>(),
    )
    .bind(debits.iter().map(|d| d.user_id).collect::<Vec<_>>())
    .bind(debits.iter().map(|d| d.amount).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    failed: &HashMap<Uuid, &'static str>,
) -> Result<(), DbError> {
    if failed.is_empty() {
        return Ok(());
    }
    let done = sqlx::query(
        "UPDATE orders AS o SET status = 'failed', failure_reason = f.reason
         FROM UNNEST($1::uuid[], $2::text[]) AS f(order_no, reason)
         WHERE o.order_no = f.order_no AND o.status = 'confirmed'",
    )
    .bind(failed.keys().copied().collect::<Vec<_>>())
    .bind(failed.values().map(|r| r.to_string()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    debug_assert_eq!(done.rows_affected() as usize, failed.len());
    Ok(())
}

/// Adds confirmed quantities to each event's `sold`, one event at a time in id order.
async fn bump_sold(
    tx: &mut Transaction<'_, Postgres>,
    fresh: &[Intent],
    failed: &HashMap<Uuid, &'static str>,
) -> Result<(), DbError> {
    let mut sold: BTreeMap<i64, i64> = BTreeMap::new();
    for intent in fresh.iter().filter(|i| !failed.contains_key(&i.order_no)) {
        *sold.entry(intent.event_id).or_default() += intent.quantity as i64;
    }
    for (event_id, quantity) in sold {
        sqlx::query("UPDATE events SET sold = sold + $2, version = version + 1 WHERE id = $1")
            .bind(event_id)
            .bind(quantity)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Settles a committed batch in Redis: ack confirmed intents, release failed
/// ones (their units back on sale), discard `stock_lost` ones (their units
/// never existed). Returns the events that got stock back.
pub async fn settle(redis: &Redis, result: &BatchResult) -> Result<Vec<i64>, RedisError> {
    #[derive(Default)]
    struct Settle {
        acks: Vec<Uuid>,
        releases: Vec<Uuid>,
        discards: Vec<Uuid>,
    }
    let mut per_event: BTreeMap<i64, Settle> = BTreeMap::new();
    let mut file = |intent: &Intent, failure: Option<&str>| {
        let slot = per_event.entry(intent.event_id).or_default();
        match failure {
            None => slot.acks.push(intent.order_no),
            Some(STOCK_LOST) => slot.discards.push(intent.order_no),
            Some(_) => slot.releases.push(intent.order_no),
        }
    };
    for intent in &result.confirmed {
        file(intent, None);
    }
    for (intent, reason) in &result.failed {
        file(intent, Some(reason));
    }
    for (intent, failure) in &result.already {
        file(intent, failure.as_deref());
    }
    for &(event_id, unsold) in &result.oversold {
        redis.cap_stock(event_id, unsold).await?;
    }
    let mut restocked = Vec::new();
    for (event_id, settle) in per_event {
        redis.ack(event_id, &settle.acks).await?;
        redis.discard(event_id, &settle.discards).await?;
        if redis.release(event_id, &settle.releases).await? > 0 {
            redis.publish_stock_back(event_id).await?;
            restocked.push(event_id);
        }
    }
    Ok(restocked)
}

/// Asks Redis, per event, whether each intent is still accounted for;
/// returns the order_nos that lost their stock to a Redis restart and found
/// none left.
///
/// Common case, one `missing.lua` call per event that finds every intent
/// still pending in the ledger. Only intents missing from it go through
/// `admit.lua` (already settled, or lost by a Redis restart: without
/// persistence, or the last second of an `everysec` AOF). An event Redis does
/// not hold at all (lost, not rebuilt yet) refuses nothing: the rebuild, which
/// waits for this transaction's row lock, will count what it commits.
async fn admit(redis: &Redis, batch: &[Intent]) -> Result<HashSet<Uuid>, RedisError> {
    let mut per_event: BTreeMap<i64, Vec<Intent>> = BTreeMap::new();
    for intent in batch {
        per_event.entry(intent.event_id).or_default().push(*intent);
    }
    let mut refused = HashSet::new();
    for (event_id, intents) in per_event {
        let suspect = redis.missing_from_ledger(event_id, &intents).await?;
        if suspect.is_empty() {
            continue;
        }
        if let Admission::Decided(states) = redis.admit(event_id, &suspect).await? {
            for (order_no, state) in states {
                match state {
                    0 => {
                        refused.insert(order_no);
                    }
                    2 => {
                        tracing::warn!(%order_no, event_id, "intent lost by redis took its stock again")
                    }
                    _ => {}
                }
            }
        }
    }
    metrics::counter!("seckill_intents_refused_total").increment(refused.len() as u64);
    Ok(refused)
}
