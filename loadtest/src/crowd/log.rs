//! What the crowd saw: every answer as a compact sample for the statistics,
//! the requests dropped for being too late, and the facts the verifier needs
//! (acknowledged orders, shoppers with an unknown effect, pairs of answers to
//! one `Idempotency-Key`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::api::{Outcome, PurchaseResult};

/// One request as the statistics need it (16 bytes; a million fit easily).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the answer arrived, µs after the sale started.
    pub at_us: u32,
    /// From the request's due time to its answer: in the open model the
    /// wait for a free connection counts (coordinated omission corrected).
    pub latency_us: u32,
    /// From the due time to the send (0 in the closed loop).
    pub lag_us: u32,
    pub outcome: Outcome,
}

/// When a request was due and when it left.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub due: Instant,
    pub sent: Instant,
}

impl Timing {
    /// A request due at `due`, leaving now.
    pub(super) fn now(due: Instant) -> Self {
        Self {
            due,
            sent: Instant::now(),
        }
    }
}

/// A 202 as the verifier needs it.
#[derive(Debug, Clone, Copy)]
pub struct AcceptedOrder {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i64,
}

/// The two answers to one `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdemPair {
    pub user_id: i64,
    pub concurrent: bool,
    pub first: (Outcome, Option<Uuid>),
    pub second: (Outcome, Option<Uuid>),
}

/// How many attempts of each shape were made.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Shapes {
    pub single: u64,
    pub retry: u64,
    pub duplicate: u64,
}

/// Everything the crowd saw, merged over the workers.
#[derive(Debug, Default)]
pub struct CrowdLog {
    pub samples: Vec<Sample>,
    /// Due times (µs after the start) of the requests not sent because they
    /// were more than `--max-lag-ms` late.
    pub dropped: Vec<u32>,
    pub accepted: Vec<AcceptedOrder>,
    /// Shoppers with at least one request whose effect is unknown.
    pub ambiguous_users: Vec<i64>,
    /// Shoppers with at least one request that got a verdict on the stock.
    pub sale_users: Vec<i64>,
    pub idem: Vec<IdemPair>,
    /// Unexpected answers by `"<status> <code>"`.
    pub unexpected: HashMap<String, u64>,
    pub shapes: Shapes,
    /// Orders their shopper cancelled (answered 200).
    pub cancelled: Vec<Uuid>,
    /// Cancels that did not end in 200: "status code" -> count.
    pub cancel_failures: HashMap<String, u64>,
    /// `order_pending` answers retried before a cancel went through.
    pub cancel_pending_retries: u64,
}

impl CrowdLog {
    /// Adds another worker's log to this one.
    pub(super) fn merge(&mut self, other: CrowdLog) {
        self.samples.extend(other.samples);
        self.dropped.extend(other.dropped);
        self.accepted.extend(other.accepted);
        self.ambiguous_users.extend(other.ambiguous_users);
        self.sale_users.extend(other.sale_users);
        self.idem.extend(other.idem);
        for (k, v) in other.unexpected {
            *self.unexpected.entry(k).or_default() += v;
        }
        self.shapes.single += other.shapes.single;
        self.shapes.retry += other.shapes.retry;
        self.shapes.duplicate += other.shapes.duplicate;
        self.cancelled.extend(other.cancelled);
        for (k, v) in other.cancel_failures {
            *self.cancel_failures.entry(k).or_default() += v;
        }
        self.cancel_pending_retries += other.cancel_pending_retries;
    }

    /// Records one answer to shopper `user_id`; `t0` is the sale's start.
    pub(super) fn record(
        &mut self,
        t0: Instant,
        timing: Timing,
        user_id: i64,
        qty: i64,
        r: &PurchaseResult,
    ) {
        let lag = timing.sent.saturating_duration_since(timing.due);
        self.samples.push(Sample {
            at_us: micros(timing.sent.saturating_duration_since(t0) + r.latency),
            latency_us: micros(lag + r.latency).max(1),
            lag_us: micros(lag),
            outcome: r.outcome,
        });
        if let (Outcome::Accepted, Some(order_no)) = (r.outcome, r.order_no) {
            self.accepted.push(AcceptedOrder {
                order_no,
                user_id,
                quantity: qty,
            });
        }
        if r.outcome.is_ambiguous() {
            self.ambiguous_users.push(user_id);
        }
        if r.outcome.reached_sale() {
            self.sale_users.push(user_id);
        }
        if let Some(why) = &r.unexpected {
            *self.unexpected.entry(why.clone()).or_default() += 1;
        }
    }

    /// Records `n` requests due at `due` as dropped.
    pub(super) fn drop_late(&mut self, t0: Instant, due: Instant, n: u64) {
        let at = micros(due.saturating_duration_since(t0));
        self.dropped.extend((0..n).map(|_| at));
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
