//! What Redis should hold for an event, from Postgres truth and the intents
//! still pending in the ledger, and how far it is from that: read by the
//! reconciler (to repair) and the invariant checker (to report).
//!
//! Nothing here reads a whole event at once. The aggregate check costs O(1)
//! in Redis (the counters `state.lua` reads) plus a walk of the ledger, whose
//! size is the work still in flight, not the size of the sale; Postgres
//! answers it from `events.sold` and the ledger's order_nos. Buyers are
//! compared in bounded batches (`buyers.lua` reads a batch at one instant),
//! each exact on its own, while the sale runs:
//!
//! - every order of those buyers is either pending in the ledger at that
//!   instant (counted from Redis) or was settled before it and accepted no
//!   later than it (counted from Postgres, `created_at` is the acceptance
//!   time), so "Postgres units of orders accepted by then and not pending,
//!   plus pending units" is what Redis must hold for each of them.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db::{self, events::Event, DbError},
    intent::{from_millis, LedgerEntry},
    loading,
    redis::{BuyerState, Redis, RedisError, SaleState},
};

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// One look at an event: Redis's counters, then its ledger page by page with
/// each entry's fate in Postgres, then Postgres's sold units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub state: SaleState,
    pub ledger: Vec<(Uuid, LedgerEntry)>,
    /// Ledger entries Postgres has: `None` confirmed, `Some(reason)` failed.
    pub persisted: HashMap<Uuid, Option<String>>,
    /// Ledger entries whose orders Postgres has refunded since (the ack has
    /// not run yet): not among the confirmed ones.
    pub refunded_pending: HashSet<Uuid>,
    /// `events.sold`: units of confirmed orders (refunded ones left it).
    pub sold: i64,
    pub stock_total: i64,
    /// Refunds Postgres committed whose units Redis has not taken back
    /// (not in the `returned` set): (order_no, units). Read after the ledger.
    pub unreturned: Vec<(Uuid, i64)>,
}

/// The aggregate differences between Redis and what it should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AggregateDrift {
    /// (in Redis, expected) stock left.
    pub stock: Option<(i64, i64)>,
    /// (in Redis, expected) units held by buyers.
    pub held: Option<(i64, i64)>,
}

impl AggregateDrift {
    pub fn is_none(&self) -> bool {
        self.stock.is_none() && self.held.is_none()
    }
}

impl Observation {
    /// One look at the whole event: with several stock buckets, their
    /// counters summed (a unit in flight between two buckets counts as
    /// stock: it is unsold, on its way to one of them) and their ledgers
    /// read one after another.
    pub async fn take(db: &PgPool, redis: &Redis, event: &Event) -> Result<Self, DriftError> {
        let mut states = Vec::new();
        let mut ledger = Vec::new();
        for bucket in loading::buckets(event) {
            states.push(redis.bucket_state(bucket).await?);
            let mut cursor = "0".to_owned();
            loop {
                let (next, page) = redis.ledger_page(bucket, &cursor).await?;
                ledger.extend(page);
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        let state = SaleState::merged(&states);
        let order_nos: Vec<Uuid> = ledger.iter().map(|(o, _)| *o).collect();
        let mut persisted = HashMap::new();
        for chunk in order_nos.chunks(1_000) {
            persisted.extend(db::orders::failure_reasons(db, chunk).await?);
        }
        let mut refunded_pending = HashSet::new();
        for chunk in order_nos.chunks(1_000) {
            refunded_pending.extend(db::orders::refunded_among(db, chunk).await?);
        }
        let sold = db::checks::sold(db, event.id).await?;
        let unreturned = unreturned_refunds(db, redis, event).await?;
        Ok(Self {
            state,
            ledger,
            persisted,
            refunded_pending,
            sold,
            stock_total: event.stock_total,
            unreturned,
        })
    }

    /// Units of refunds not back in Redis whose intents left the ledger:
    /// their buyers still hold them in Redis, and Postgres no longer counts
    /// them in `sold`. (One still in the ledger is counted there.)
    pub fn unreturned_settled_units(&self) -> i64 {
        let in_ledger: HashSet<Uuid> = self.ledger.iter().map(|(o, _)| *o).collect();
        self.unreturned
            .iter()
            .filter(|(o, _)| !in_ledger.contains(o))
            .map(|(_, q)| q)
            .sum()
    }

    /// Units of every refund not back in Redis.
    pub fn unreturned_units(&self) -> i64 {
        self.unreturned.iter().map(|(_, q)| q).sum()
    }

    /// Units Redis should hold: confirmed orders (those still pending
    /// counted once), every pending intent (a failed one holds its units
    /// until its release runs, a refunded one until its ack), and refunded
    /// orders whose units refund.lua has not taken back yet.
    pub fn expected_held(&self) -> i64 {
        let pending: i64 = self.ledger.iter().map(|(_, e)| e.quantity as i64).sum();
        let confirmed_pending: i64 = self
            .ledger
            .iter()
            .filter(|(o, _)| {
                matches!(self.persisted.get(o), Some(None)) && !self.refunded_pending.contains(o)
            })
            .map(|(_, e)| e.quantity as i64)
            .sum();
        self.sold - confirmed_pending + pending + self.unreturned_settled_units()
    }

    pub fn expected_stock(&self) -> i64 {
        self.stock_total - self.expected_held()
    }

    /// Redis's total is Postgres's `stock_total`. Not so only while a stock
    /// adjustment is between its two halves (applied in Redis, not yet
    /// committed, or left pending by a crash for the reconciler to settle):
    /// the expected stock is then unknown, and no stock drift is reported.
    pub fn totals_agree(&self) -> bool {
        !self.state.loaded || self.state.total == self.stock_total
    }

    pub fn drift(&self) -> AggregateDrift {
        let stock = self.state.stock_left.unwrap_or(-1);
        let held = self.state.held.unwrap_or(-1);
        let (want_stock, want_held) = (self.expected_stock(), self.expected_held());
        AggregateDrift {
            stock: (stock != want_stock && self.totals_agree()).then_some((stock, want_stock)),
            held: (held != want_held).then_some((held, want_held)),
        }
    }
}

/// Most unreturned refunds of an event one observation reads (the refunds
/// in flight: a request's few milliseconds, or what a crash left for the
/// reconciler, which finishes up to 1,024 per pass).
const MOST_UNRETURNED: i64 = 100_000;

/// Refunds Postgres committed whose units Redis has not taken back: those
/// not marked `stock_returned`, less those the `returned` set has (the flag
/// is set after the script; the set is the truth). When the event is not
/// loaded, nothing in Redis holds them.
async fn unreturned_refunds(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<Vec<(Uuid, i64)>, DriftError> {
    let refunds = db::refunds::unreturned(db, event.id, None, MOST_UNRETURNED).await?;
    if refunds.is_empty() {
        return Ok(Vec::new());
    }
    let order_nos: Vec<Uuid> = refunds.iter().map(|r| r.order_no).collect();
    let returned = redis
        .event_returned_among(loading::event_buckets(event), &order_nos)
        .await?;
    Ok(refunds
        .iter()
        .zip(returned)
        .filter(|(_, back)| !back)
        .map(|(r, _)| (r.order_no, r.quantity as i64))
        .collect())
}

/// Buyers whose units in Redis differ from Postgres truth, from one
/// `buyers.lua` read of them at `at_ms`: (user, in Redis, expected).
pub async fn buyer_drift(
    db: &PgPool,
    event_id: i64,
    at_ms: i64,
    buyers: &[BuyerState],
) -> Result<Vec<(i64, i64, i64)>, DbError> {
    let users: Vec<i64> = buyers.iter().map(|b| b.user_id).collect();
    let rows = db::orders::of_buyers(db, event_id, &users, Some(from_millis(at_ms))).await?;
    let pending: HashSet<Uuid> = buyers
        .iter()
        .flat_map(|b| b.pending.iter().map(|(o, _)| *o))
        .collect();
    let mut settled: HashMap<i64, i64> = HashMap::new();
    // A buyer with a refund in flight holds its units until refund.lua runs,
    // at an instant this read does not know: compared once it is done.
    let mut refunding: HashSet<i64> = HashSet::new();
    for row in rows {
        if row.refund_in_flight {
            refunding.insert(row.user_id);
        }
        if !row.failed && !pending.contains(&row.order_no) {
            *settled.entry(row.user_id).or_default() += row.quantity as i64;
        }
    }
    let mut drift: Vec<(i64, i64, i64)> = buyers
        .iter()
        .filter(|b| !refunding.contains(&b.user_id))
        .filter_map(|b| {
            let pending: i64 = b.pending.iter().map(|(_, q)| q).sum();
            let want = settled.get(&b.user_id).copied().unwrap_or(0) + pending;
            (b.held != want).then_some((b.user_id, b.held, want))
        })
        .collect();
    drift.sort_unstable();
    Ok(drift)
}
