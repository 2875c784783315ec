//! What the reconciler shows in `/metrics` between passes: whether this
//! process leads, and for each live event the leader's last look at its
//! ledger (pending intents, the oldest one's age).
//!
//! The age costs Redis nothing extra: every pass already walks each event's
//! ledger in HSCAN pages (the work in flight, not the sale) to settle stale
//! intents, and the oldest `accepted_ms` it saw is kept. So the figure is as
//! fresh as the last pass (`SECKILL_RECONCILE_INTERVAL_MS`), and only the
//! leader reports it: a process that stops leading sets its events back to
//! 0, so `max` over processes is the leader's view.

use std::{collections::HashSet, sync::Mutex};

use crate::drift::Observation;

pub(super) struct Gauges {
    /// Events this process reported a ledger for.
    reported: Mutex<HashSet<i64>>,
}

impl Default for Gauges {
    /// Also exports every discrepancy counter at 0, so an alert's `increase()`
    /// sees the first finding of each kind.
    fn default() -> Self {
        for kind in super::DISCREPANCY_KINDS {
            metrics::counter!("seckill_reconcile_discrepancies_total", "kind" => *kind)
                .increment(0);
        }
        Self {
            reported: Mutex::default(),
        }
    }
}

impl Gauges {
    pub(super) fn leader(&self, leading: bool) {
        metrics::gauge!("seckill_reconcile_leader").set(if leading { 1.0 } else { 0.0 });
        if !leading {
            let events: Vec<i64> = self.reported.lock().expect("gauges").drain().collect();
            for event_id in events {
                set(event_id, 0, 0.0);
            }
        }
    }

    /// The ledger of one event as a pass observed it.
    pub(super) fn ledger(&self, event_id: i64, seen: &Observation) {
        let oldest_ms = seen.ledger.iter().map(|(_, e)| e.accepted_ms).min();
        let age = oldest_ms.map_or(0.0, |ms| (seen.state.at_ms - ms).max(0) as f64 / 1000.0);
        set(event_id, seen.ledger.len(), age);
        self.reported.lock().expect("gauges").insert(event_id);
    }

    /// An event whose Redis state was closed out: nothing pending any more.
    pub(super) fn closed(&self, event_id: i64) {
        if self.reported.lock().expect("gauges").remove(&event_id) {
            set(event_id, 0, 0.0);
        }
    }
}

fn set(event_id: i64, pending: usize, oldest_age_seconds: f64) {
    let event = event_id.to_string();
    metrics::gauge!("seckill_ledger_pending_intents", "event_id" => event.clone())
        .set(pending as f64);
    metrics::gauge!("seckill_ledger_oldest_intent_age_seconds", "event_id" => event)
        .set(oldest_age_seconds);
}
