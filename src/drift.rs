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
    /// `events.sold`: units of confirmed orders.
    pub sold: i64,
    pub stock_total: i64,
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
    pub async fn take(db: &PgPool, redis: &Redis, event: &Event) -> Result<Self, DriftError> {
        let state = redis.sale_state(event.id).await?;
        let mut ledger = Vec::with_capacity(state.pending.max(0) as usize);
        let mut cursor = "0".to_owned();
        loop {
            let (next, page) = redis.ledger_page(event.id, &cursor).await?;
            ledger.extend(page);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let order_nos: Vec<Uuid> = ledger.iter().map(|(o, _)| *o).collect();
        let mut persisted = HashMap::new();
        for chunk in order_nos.chunks(1_000) {
            persisted.extend(db::orders::failure_reasons(db, chunk).await?);
        }
        let sold = db::checks::sold(db, event.id).await?;
        Ok(Self {
            state,
            ledger,
            persisted,
            sold,
            stock_total: event.stock_total,
        })
    }

    /// Units Redis should hold: confirmed orders (those still pending
    /// counted once) and every pending intent (a failed one holds its units
    /// until its release runs).
    pub fn expected_held(&self) -> i64 {
        let pending: i64 = self.ledger.iter().map(|(_, e)| e.quantity as i64).sum();
        let confirmed_pending: i64 = self
            .ledger
            .iter()
            .filter(|(o, _)| matches!(self.persisted.get(o), Some(None)))
            .map(|(_, e)| e.quantity as i64)
            .sum();
        self.sold - confirmed_pending + pending
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
    for row in rows {
        if !row.failed && !pending.contains(&row.order_no) {
            *settled.entry(row.user_id).or_default() += row.quantity as i64;
        }
    }
    let mut drift: Vec<(i64, i64, i64)> = buyers
        .iter()
        .filter_map(|b| {
            let pending: i64 = b.pending.iter().map(|(_, q)| q).sum();
            let want = settled.get(&b.user_id).copied().unwrap_or(0) + pending;
            (b.held != want).then_some((b.user_id, b.held, want))
        })
        .collect();
    drift.sort_unstable();
    Ok(drift)
}
