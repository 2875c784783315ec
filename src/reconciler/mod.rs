//! The reconciler: makes Redis and Postgres agree, and finishes what a crash
//! or a full channel left behind.
//!
//! It runs in every engine process, but a pass only runs while holding the
//! Redis leader lock (random token, renewed at a third of its TTL, released
//! by compare-and-delete; losing it stops the pass). For every live event
//! ([`event`]):
//!
//! 1. Over long enough and fully persisted → its Redis state is closed out.
//! 2. Redis lost the event (restart without persistence) → rebuild it from
//!    Postgres plus whatever intents survive ([`crate::loading::rebuild`]).
//! 3. Pending intents older than the grace period: already in Postgres → ack
//!    (or release, if failed); not in Postgres → persist through the writer
//!    path (roll forward: the shopper was told 202).
//! 4. Refunds committed in Postgres whose units are not back in the sale
//!    (a crash after the commit) → returned by `refund.lua`, exactly once
//!    ([`crate::refunds::finish_event`]); this runs first, before the look.
//! 5. Stock transfers between an event's buckets left half done (a crash
//!    between the source's step and the target's) → landed once
//!    ([`transfers`]); this runs before the look too.
//! 6. Stock and buyer counts that disagree with Postgres truth plus pending
//!    intents ([`crate::drift`]) → observed twice, then corrected by
//!    `repair.lua`, which writes only if the state is still exactly as observed.
//!    An event of several buckets is looked at as one (counters summed,
//!    ledgers read in turn); its buyers are compared and repaired in their
//!    home buckets, and each bucket's stock is set to its total less what
//!    its shoppers hold.
//!
//! Before the events, each pass finishes the stock adjustments a crash left
//! pending ([`crate::lifecycle::settle_adjustment`]: applied once, as Redis
//! recorded it), and after a sale's intents it puts Postgres's sale
//! parameters (window, pause, price, limit) back into Redis where they
//! differ ([`crate::lifecycle::sync_params`]).
//!
//! Every finding is written to `reconcile_discrepancies`, every pass to
//! `reconcile_runs`, and counted in `/metrics`.

mod drift;
mod event;
mod gauges;
mod transfers;

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use crate::db::reconcile::Discrepancy;
use crate::{
    db::{self, events::Event, DbError},
    idempotency,
    loading::LoadError,
    redis::{LeaderLock, Redis, RedisError},
    writer::WriterQueue,
};

/// What one pass found and did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub run_id: Option<i64>,
    pub holder: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub events_checked: usize,
    /// Ended events whose Redis state was removed (see `CLOSE_OUT_AFTER`).
    pub events_closed_out: usize,
    pub intents_replayed: usize,
    pub intents_acked: usize,
    /// Refunds whose units a crash left unreturned, finished by this pass.
    pub refunds_finished: usize,
    /// Stock adjustments a crash left pending, settled.
    pub adjustments_settled: usize,
    pub repairs: usize,
    pub discrepancies: Vec<Discrepancy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Another engine process holds the leader lock.
    #[error("another engine process holds the reconciler lock")]
    Busy,
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
}

impl From<crate::drift::DriftError> for ReconcileError {
    fn from(err: crate::drift::DriftError) -> Self {
        match err {
            crate::drift::DriftError::Redis(err) => Self::Redis(err),
            crate::drift::DriftError::Db(err) => Self::Db(err),
        }
    }
}

/// How the reconciler paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ReconcileSettings {
    /// Time between passes.
    pub interval: Duration,
    /// How old a pending intent must be before it is replayed.
    pub grace: Duration,
    /// Most intents replayed in one writer batch.
    pub batch_max: usize,
}

/// How long after its end an event's Redis state is kept: as long as its
/// shoppers' idempotency records, and until its ledger is empty.
const CLOSE_OUT_AFTER: chrono::TimeDelta = idempotency::RETENTION;

/// How old a pending stock adjustment must be before the reconciler settles
/// it: an operator's call locks its row a moment after writing it.
const ADJUSTMENT_GRACE: Duration = Duration::from_secs(1);

/// How long Redis may hold a sale more closed than Postgres (an end or a
/// pause between its Redis write and its commit) before the reconciler
/// takes it for a crash's leftover and loads Postgres's parameters.
const CLOSING_SETTLES_IN: Duration = Duration::from_secs(10);

/// Every `kind` a [`Discrepancy`] can have (the metric's label values).
pub const DISCREPANCY_KINDS: &[&str] = &[
    "redis_state_lost",
    "unacked_intent",
    "unpersisted_intent",
    "stock_drift",
    "oversold",
    "buyer_drift",
    "sale_params_drift",
    "pending_adjustment",
    "refund_stock_unreturned",
];

/// How long to wait before confirming a difference with a second look.
const CONFIRM_AFTER: Duration = Duration::from_millis(150);

/// The reconciler of one engine process, and what it works with.
pub struct Reconciler {
    db: PgPool,
    redis: Redis,
    /// This process's writers: their backlog is not a leftover to replay.
    writers: WriterQueue,
    settings: ReconcileSettings,
    lock: LeaderLock,
    /// Serializes passes within the process (timer and admin route).
    gate: tokio::sync::Mutex<()>,
    /// Who ran a pass (the process instance), in `reconcile_runs`.
    holder: String,
    /// Where the background sweep of each event's buyers stands.
    sweeps: std::sync::Mutex<std::collections::HashMap<crate::redis::Bucket, drift::SweepCursor>>,
    /// Since when each event's Redis has been seen more closed than Postgres.
    closing_since: std::sync::Mutex<std::collections::HashMap<i64, std::time::Instant>>,
    /// Leadership and ledger figures for `/metrics`.
    gauges: gauges::Gauges,
}

impl Reconciler {
    pub fn new(
        db: PgPool,
        redis: Redis,
        writers: WriterQueue,
        settings: ReconcileSettings,
        holder: String,
    ) -> Self {
        let ttl = (settings.interval * 3).max(Duration::from_secs(3));
        let lock = LeaderLock::new(redis.clone(), redis.keys().reconcile_lock(), ttl);
        Self {
            db,
            redis,
            writers,
            settings,
            lock,
            gate: tokio::sync::Mutex::new(()),
            holder,
            sweeps: Default::default(),
            closing_since: Default::default(),
            gauges: Default::default(),
        }
    }

    /// Runs a pass every interval until `stop`, then lets the lock go.
    pub async fn run_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.run_guarded().await {
                Ok(Some(report)) if !report.discrepancies.is_empty() => {
                    tracing::warn!(
                        discrepancies = report.discrepancies.len(),
                        replayed = report.intents_replayed,
                        repairs = report.repairs,
                        "reconciler repaired drift"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
            }
        }
        let _ = self.lock.release().await;
        self.gauges.leader(false);
    }

    /// Runs one pass now (the admin route), waiting briefly for the lock.
    pub async fn run_now(&self) -> Result<Report, ReconcileError> {
        for _ in 0..20 {
            if let Some(report) = self.run_guarded().await? {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ReconcileError::Busy)
    }

    /// One pass under the leader lock; `None` when another process leads.
    async fn run_guarded(&self) -> Result<Option<Report>, ReconcileError> {
        let _serial = self.gate.lock().await;
        let leading = self.lock.hold().await;
        self.gauges.leader(matches!(leading, Ok(true)));
        if !leading? {
            return Ok(None);
        }
        let lost = CancellationToken::new();
        let renew = async {
            loop {
                tokio::time::sleep(self.lock.ttl() / 3).await;
                if !matches!(self.lock.hold().await, Ok(true)) {
                    self.gauges.leader(false);
                    lost.cancel();
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            report = self.pass(&lost) => report.map(Some),
            () = renew => unreachable!("renewal never ends"),
        }
    }

    async fn pass(&self, lost: &CancellationToken) -> Result<Report, ReconcileError> {
        let started_at = Utc::now();
        let mut report = Report {
            holder: self.holder.clone(),
            started_at: Some(started_at),
            ..Default::default()
        };
        self.settle_pending_adjustments(&mut report).await?;
        for event in self.events_to_check().await? {
            if lost.is_cancelled() {
                tracing::warn!("reconciler lost its lock mid-pass; stopping");
                break;
            }
            report.events_checked += 1;
            self.reconcile_event(&event, &mut report).await?;
        }
        let finished_at = Utc::now();
        report.finished_at = Some(finished_at);
        let run = db::reconcile::Run {
            started_at,
            finished_at,
            holder: &report.holder,
            events_checked: report.events_checked,
            intents_replayed: report.intents_replayed,
            intents_acked: report.intents_acked,
            repairs: report.repairs,
        };
        report.run_id = Some(db::reconcile::record(&self.db, &run, &report.discrepancies).await?);
        for d in &report.discrepancies {
            metrics::counter!("seckill_reconcile_discrepancies_total", "kind" => d.kind)
                .increment(1);
        }
        metrics::counter!("seckill_reconcile_replayed_total")
            .increment(report.intents_replayed as u64);
        metrics::counter!("seckill_reconcile_runs_total").increment(1);
        metrics::histogram!("seckill_reconcile_pass_seconds")
            .record((finished_at - started_at).as_seconds_f64());
        metrics::gauge!("seckill_reconcile_last_success_timestamp_seconds")
            .set(finished_at.timestamp_millis() as f64 / 1000.0);
        Ok(report)
    }

    /// Settles the stock adjustments left pending (a crash between the row
    /// and its settlement), a bounded number per pass. Only those older than
    /// [`ADJUSTMENT_GRACE`], and not locked by an operator's call settling it
    /// (which holds its row from before the fence to the commit).
    async fn settle_pending_adjustments(&self, report: &mut Report) -> Result<(), ReconcileError> {
        for id in db::adjustments::pending(&self.db, ADJUSTMENT_GRACE, 100).await? {
            let settled = match crate::lifecycle::settle_adjustment(&self.db, &self.redis, id).await
            {
                Ok(Some(settled)) => settled,
                // An operator's call is settling it right now.
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(adjustment = id, error = %err, "could not settle a pending stock adjustment");
                    continue;
                }
            };
            report.adjustments_settled += 1;
            report.discrepancies.push(Discrepancy {
                event_id: settled.event_id,
                kind: "pending_adjustment",
                subject: Some(id.to_string()),
                before: format!("pending (delta {})", settled.delta),
                after: match &settled.refusal {
                    None => format!(
                        "applied: stock_total {}",
                        settled.stock_total_after.unwrap_or_default()
                    ),
                    Some(why) => format!("refused: {why}"),
                },
                repaired: true,
            });
        }
        Ok(())
    }

    /// Events worth a look: loaded in Redis, or preheated in Postgres and not
    /// long over (a Redis that lost everything lost its live set too).
    async fn events_to_check(&self) -> Result<Vec<Event>, ReconcileError> {
        let mut ids: HashSet<i64> = self.redis.live_events().await?.into_iter().collect();
        ids.extend(db::events::preheated_ids(&self.db, CLOSE_OUT_AFTER).await?);
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(event) = db::events::get(&self.db, id).await? {
                events.push(event);
            }
        }
        events.sort_by_key(|e| e.id);
        Ok(events)
    }
}
