//! One event's reconciliation, the intents half: close-out of an ended
//! sale, rebuild of a sale Redis lost, and intents left in the ledger
//! (persisted but not acked, or never persisted). The state half is in
//! [`super::drift`].

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use uuid::Uuid;

use super::{
    Discrepancy, ReconcileError, Reconciler, Report, CLOSE_OUT_AFTER, CLOSING_SETTLES_IN,
    CONFIRM_AFTER,
};
use crate::{
    db::{self, events::Event, DbError},
    drift::Observation,
    intent::{Intent, Settled},
    loading,
    redis::Bucket,
    refunds,
    writer::{self, settle, Settlement},
};

impl Reconciler {
    pub(super) async fn reconcile_event(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        self.finish_refunds(event, report).await?;
        self.finish_transfers(event, report).await?;
        let seen = Observation::take(&self.db, &self.redis, event).await?;
        let state = seen.state;
        if Utc::now() >= event.ends_at + CLOSE_OUT_AFTER && state.pending == 0 {
            // Over, every order persisted, idempotency records expired: Redis
            // need not hold the sale any more.
            self.redis.close_out(loading::event_buckets(event)).await?;
            self.gauges.closed(event.id);
            report.events_closed_out += 1;
            return Ok(());
        }
        if !state.intact() {
            if event.preheated_at.is_none() || Utc::now() >= event.ends_at {
                return Ok(());
            }
            let why = if state.loaded {
                "loaded without the held/pending counters"
            } else {
                "event missing from redis"
            };
            self.wait_for_quiet_writers(event.id).await?;
            let Some((stock_left, kept)) =
                loading::rebuild_if_lost(&self.db, &self.redis, event).await?
            else {
                return Ok(());
            };
            self.redis.publish_stock_back(event.id).await?;
            report.repairs += 1;
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "redis_state_lost",
                subject: None,
                before: why.into(),
                after: format!(
                    "rebuilt from postgres: stock_left={stock_left}, surviving intents={kept}"
                ),
                repaired: true,
            });
            return Ok(());
        }

        self.settle_bucket_totals(event, report).await?;
        self.gauges.ledger(event.id, &seen);
        self.settle_stale_intents(event, &seen, report).await?;
        if self.sync_sale_params(event.id).await? {
            report.repairs += 1;
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "sale_params_drift",
                subject: None,
                before: "redis sale parameters differ from postgres".into(),
                after: "postgres's window, pause, price and limit loaded".into(),
                repaired: true,
            });
        }
        self.repair_drift(event, seen, report).await?;
        self.sweep_some_buyers(event, report).await
    }

    /// Refunds committed more than the grace period ago whose units are not
    /// back in the sale (a crash between the commit and refund.lua, or an
    /// order its writer had not acked): returned now, exactly once (see
    /// [`crate::refunds`]). Runs before the sale is observed, so the drift
    /// checks see them back.
    async fn finish_refunds(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let finished = refunds::finish_event(&self.db, &self.redis, event.id, self.settings.grace)
            .await
            .map_err(|err| match err {
                refunds::RefundError::Redis(err) => ReconcileError::Redis(err),
                refunds::RefundError::Db(err) => ReconcileError::Db(err),
                other => ReconcileError::Db(DbError::Batch(other.to_string())),
            })?;
        if finished > 0 {
            report.refunds_finished += finished;
            report.repairs += 1;
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "refund_stock_unreturned",
                subject: None,
                before: format!("{finished} refunds committed with their units not back"),
                after: "units returned (or no sale loaded to return them to)".into(),
                repaired: true,
            });
        }
        Ok(())
    }

    /// Intents past the grace period are either persisted already (ack or
    /// release them) or were never persisted (replay them).
    async fn settle_stale_intents(
        &self,
        event: &Event,
        seen: &Observation,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let grace_ms = self.settings.grace.as_millis() as i64;
        let at_ms = seen.state.at_ms;
        let stale: Vec<Intent> = seen
            .ledger
            .iter()
            .filter(|(_, e)| at_ms - e.accepted_ms >= grace_ms)
            .map(|(order_no, e)| e.intent(*order_no, event.id, loading::bucket_count(event)))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let order_nos: Vec<Uuid> = stale.iter().map(|i| i.order_no).collect();
        let rows = db::orders::statuses(&self.db, &order_nos, self.settings.grace).await?;
        // Committed a moment ago: its writer is acking it right now; not a leftover.
        let settling: HashSet<Uuid> = rows
            .iter()
            .filter(|(_, _, old)| !old)
            .map(|(o, _, _)| *o)
            .collect();
        let persisted: HashMap<Uuid, Option<String>> =
            rows.into_iter().map(|(o, reason, _)| (o, reason)).collect();
        let (done, missing): (Vec<Intent>, Vec<Intent>) = stale
            .into_iter()
            .filter(|i| !settling.contains(&i.order_no))
            .partition(|i| persisted.contains_key(&i.order_no));
        let done = self.still_pending(done).await?;

        if !done.is_empty() {
            let settlements: Vec<Settlement> = done
                .iter()
                .map(|i| Settlement {
                    bucket: i.bucket(),
                    event_id: i.event_id,
                    order_no: i.order_no,
                    settled: persisted[&i.order_no]
                        .clone()
                        .map_or(Settled::Confirmed, Settled::Failed),
                })
                .collect();
            settle(&self.redis, &settlements, &[]).await?;
            report.intents_acked += done.len();
            for intent in &done {
                report.discrepancies.push(Discrepancy {
                    event_id: event.id,
                    kind: "unacked_intent",
                    subject: Some(intent.order_no.to_string()),
                    before: "pending in ledger".into(),
                    after: match &persisted[&intent.order_no] {
                        None => "settled as confirmed".into(),
                        Some(reason) => format!("settled as failed ({reason})"),
                    },
                    repaired: true,
                });
            }
        }
        // While this process's own writers are behind, the missing intents are
        // most likely in their queue: replaying them now would only add the same
        // work to a busy Postgres. They are durable in the ledger; give the
        // writers ten grace periods before stepping in.
        let missing: Vec<Intent> = if self.writers.held() > 0 {
            let patient_ms = 10 * self.settings.grace.as_millis() as i64;
            missing
                .into_iter()
                .filter(|i| at_ms - i.accepted_at.timestamp_millis() >= patient_ms)
                .collect()
        } else {
            missing
        };
        for chunk in missing.chunks(self.settings.batch_max) {
            let persisted =
                writer::persist_with_retry(&self.db, &self.redis, chunk, usize::MAX).await;
            report.intents_replayed += persisted.len();
            for intent in chunk.iter().filter(|i| persisted.contains_key(&i.order_no)) {
                report.discrepancies.push(Discrepancy {
                    event_id: event.id,
                    kind: "unpersisted_intent",
                    subject: Some(intent.order_no.to_string()),
                    before: "accepted in redis, missing in postgres".into(),
                    after: "persisted by replay".into(),
                    repaired: true,
                });
            }
        }
        Ok(())
    }

    /// Postgres's sale parameters into Redis where they differ. A sale Redis
    /// holds more closed (paused, ending earlier) is an end or pause in
    /// flight: reverted only once it has lasted [`CLOSING_SETTLES_IN`]
    /// (then it is a crash between the call's Redis write and its commit).
    async fn sync_sale_params(&self, event_id: i64) -> Result<bool, ReconcileError> {
        use crate::lifecycle::{sync_params, ParamsSync};
        let revert = self
            .closing_since
            .lock()
            .expect("closing map")
            .get(&event_id)
            .is_some_and(|since| since.elapsed() >= CLOSING_SETTLES_IN);
        let outcome = sync_params(&self.db, &self.redis, event_id, revert).await?;
        let mut closing = self.closing_since.lock().expect("closing map");
        if outcome == ParamsSync::Closing {
            closing
                .entry(event_id)
                .or_insert_with(std::time::Instant::now);
        } else {
            closing.remove(&event_id);
        }
        Ok(outcome == ParamsSync::Corrected)
    }

    /// Waits (bounded) until no order of the event has been committed for a
    /// moment: writers drain what they hold before the sale re-opens, so fewer
    /// intents of the lost Redis have to compete for stock again.
    async fn wait_for_quiet_writers(&self, event_id: i64) -> Result<(), DbError> {
        let db = &self.db;
        // Longer than a writer's longest retry backoff, so a writer waiting to
        // retry is not mistaken for one that has finished.
        const QUIET: Duration = Duration::from_millis(3 * writer::MAX_BACKOFF.as_millis() as u64);
        const AT_MOST: Duration = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let count = || db::orders::count_for_event(db, event_id);
        let mut last = count().await?;
        while started.elapsed() < AT_MOST {
            tokio::time::sleep(QUIET).await;
            let now = count().await?;
            // Quiet: nothing committed for a while, and this process holds nothing.
            if now == last && self.writers.held() == 0 {
                break;
            }
            last = now;
        }
        Ok(())
    }

    /// Of intents persisted a while ago but still in the ledger, those still
    /// there after a second look: a writer slowed down (a long transaction,
    /// a busy machine) acks its own in the meantime, and is no leftover.
    async fn still_pending(&self, intents: Vec<Intent>) -> Result<Vec<Intent>, ReconcileError> {
        if intents.is_empty() {
            return Ok(intents);
        }
        tokio::time::sleep(CONFIRM_AFTER).await;
        let mut per_bucket: std::collections::BTreeMap<Bucket, Vec<Uuid>> = Default::default();
        for intent in &intents {
            per_bucket
                .entry(intent.bucket())
                .or_default()
                .push(intent.order_no);
        }
        let mut pending: HashSet<Uuid> = HashSet::new();
        for (bucket, order_nos) in per_bucket {
            pending.extend(
                self.redis
                    .ledger_entries(bucket, &order_nos)
                    .await?
                    .into_iter()
                    .map(|(o, _)| o),
            );
        }
        Ok(intents
            .into_iter()
            .filter(|i| pending.contains(&i.order_no))
            .collect())
    }
}
