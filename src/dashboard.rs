//! What the live dashboard shows, sampled once a second by one background
//! task and shared by every open tab: the last [`KEEP`] one-second samples
//! (purchase rates by outcome, purchase p99, writer drain rate, channel
//! depth, outbox backlog, and per live event its stock left, pending
//! intents and units sold) and the alerts derived from them.
//!
//! A sample costs O(1) whatever the sale's size: this process's own
//! metrics (rendered in memory), `state.lua` per recent event (the counters
//! the scripts keep) and one indexed read of the recent events. Polls of
//! `/admin/dashboard/data` return the last snapshot as built, so ten tabs
//! cost what one does; the invariant checker runs only when asked.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    db,
    outbox::Backlog,
    redis::{Redis, SaleState},
    writer::WriterQueue,
};

/// Samples kept: five minutes at one a second.
pub const KEEP: usize = 300;
const EVERY: Duration = Duration::from_secs(1);
/// Events sampled: the most recent ones.
const EVENTS: i64 = 5;
/// Window of the counter-based alerts.
const ALERT_WINDOW: usize = 60;
/// Intents continuously pending this long raise an alert.
const OLD_INTENTS_AFTER: usize = 10;
const OUTBOX_LAG_ALERT_SECONDS: f64 = 30.0;

/// One event at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct EventSample {
    pub id: i64,
    pub stock_left: Option<i64>,
    pub pending: i64,
    pub sold: i64,
    /// Orders cancelled by their shoppers and refunded by operators.
    pub cancelled: i64,
    pub refunded: i64,
    /// Σ of the applied stock adjustments (units added or withdrawn).
    pub adjusted: i64,
    pub paused: bool,
    /// Each stock bucket of an event of several (empty for one bucket).
    pub buckets: Vec<BucketSample>,
}

/// One stock bucket in a sample.
#[derive(Clone, Debug, Serialize)]
pub struct BucketSample {
    pub index: u16,
    /// The cluster slot of its keys.
    pub slot: u16,
    pub stock_left: Option<i64>,
    pub pending: i64,
    pub moved_in: i64,
    pub moved_out: i64,
    pub in_flight: i64,
}

/// One second of the engine.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    /// Purchase answers per second by outcome (this process).
    pub purchases: BTreeMap<String, f64>,
    /// Upper bound of the histogram bucket holding the 99th percentile of
    /// this second's purchases, in ms (`None`: no purchase).
    pub p99_ms: Option<f64>,
    /// Orders committed per second by the writers (this process).
    pub drained: f64,
    pub channel_depth: usize,
    pub outbox_backlog: i64,
    pub outbox_lag_s: f64,
    pub events: Vec<EventSample>,
    /// Counters of this process, for the alerts (not sent).
    #[serde(skip)]
    counters: Counters,
}

/// The cumulative counters a sample is a difference of.
#[derive(Clone, Debug, Default)]
struct Counters {
    purchases: BTreeMap<String, f64>,
    latency_buckets: Vec<(f64, f64)>,
    persisted: f64,
    discrepancies: f64,
    channel_full: f64,
    writer_retries: f64,
}

impl Counters {
    /// Reads this process's counters from the Prometheus text it renders.
    fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines().filter(|l| l.starts_with("seckill_")) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| {
                let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
                let end = labels[start..].find('"')? + start;
                Some(labels[start..end].to_owned())
            };
            match name {
                "seckill_purchases_total" => {
                    *c.purchases
                        .entry(label("outcome").unwrap_or_default())
                        .or_default() += value
                }
                "seckill_purchase_seconds_bucket" => {
                    if let Some(le) = label("le") {
                        let le = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::INFINITY)
                        };
                        c.latency_buckets.push((le, value));
                    }
                }
                "seckill_orders_persisted_total" => c.persisted += value,
                "seckill_reconcile_discrepancies_total" => c.discrepancies += value,
                "seckill_channel_full_total" => c.channel_full += value,
                "seckill_writer_batch_retries_total" => c.writer_retries += value,
                _ => {}
            }
        }
        c.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        c
    }
}

/// The 99th percentile's bucket bound (ms) of the purchases between two
/// readings of the cumulative histogram.
fn p99_ms(before: &[(f64, f64)], now: &[(f64, f64)]) -> Option<f64> {
    let earlier: HashMap<u64, f64> = before.iter().map(|(le, n)| (le.to_bits(), *n)).collect();
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, n)| (*le, n - earlier.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| {
            if le.is_finite() {
                le * 1000.0
            } else {
                f64::INFINITY
            }
        })
        .filter(|v| v.is_finite())
}

/// An event as the page describes it (refreshed every sample).
#[derive(Clone, Debug, Serialize)]
struct EventInfo {
    id: i64,
    name: String,
    price: i64,
    stock_total: i64,
    starts_at_ms: i64,
    ends_at_ms: i64,
    /// When this process first saw it with no stock left.
    sold_out_at_ms: Option<i64>,
}

/// The ring of samples and the snapshot served to the page.
#[derive(Default)]
pub struct Samples {
    ring: RwLock<VecDeque<Sample>>,
    /// The JSON every poll returns until the next sample.
    snapshot: RwLock<Arc<str>>,
}

impl Samples {
    /// The last snapshot (JSON), `{}` before the first sample.
    pub fn snapshot(&self) -> Arc<str> {
        let s = self.snapshot.read().expect("snapshot lock").clone();
        if s.is_empty() {
            Arc::from("{\"samples\":[],\"events\":[],\"alerts\":[]}")
        } else {
            s
        }
    }

    pub fn len(&self) -> usize {
        self.ring.read().expect("ring lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the sampler reads.
pub struct Sampler {
    pub db: PgPool,
    pub redis: Redis,
    pub writers: WriterQueue,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub outbox: Arc<Backlog>,
    pub instance: String,
    pub samples: Arc<Samples>,
}

impl Sampler {
    /// Samples every second until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Counters::parse(&self.metrics.render());
        let mut last_at = tokio::time::Instant::now();
        let mut infos: BTreeMap<i64, EventInfo> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let counters = Counters::parse(&self.metrics.render());
            let seconds = last_at.elapsed().as_secs_f64().max(0.001);
            last_at = tokio::time::Instant::now();
            let sample = self
                .sample(&last, counters.clone(), seconds, &mut infos)
                .await;
            last = counters;
            let json = {
                let mut ring = self.samples.ring.write().expect("ring lock");
                ring.push_back(sample);
                while ring.len() > KEEP {
                    ring.pop_front();
                }
                let alerts = alerts(&ring);
                json!({
                    "instance": self.instance,
                    "now_ms": Utc::now().timestamp_millis(),
                    "every_ms": EVERY.as_millis() as u64,
                    "events": infos.values().rev().collect::<Vec<_>>(),
                    "alerts": alerts,
                    "samples": &*ring,
                })
                .to_string()
            };
            *self.samples.snapshot.write().expect("snapshot lock") = Arc::from(json);
        }
    }

    async fn sample(
        &self,
        last: &Counters,
        now: Counters,
        seconds: f64,
        infos: &mut BTreeMap<i64, EventInfo>,
    ) -> Sample {
        let purchases = now
            .purchases
            .iter()
            .map(|(outcome, n)| {
                let before = last.purchases.get(outcome).copied().unwrap_or(0.0);
                (outcome.clone(), ((n - before) / seconds).max(0.0))
            })
            .collect();
        let at_ms = Utc::now().timestamp_millis();
        let mut events = Vec::new();
        if let Ok(recent) = db::events::list_recent(&self.db, EVENTS).await {
            let ids: Vec<i64> = recent.iter().map(|e| e.id).collect();
            infos.retain(|id, _| ids.contains(id));
            // Two grouped reads for all the events shown, once a second.
            let refunds = db::refunds::counts_by_event(&self.db, &ids)
                .await
                .unwrap_or_default();
            let adjusted = db::adjustments::applied_by_event(&self.db, &ids)
                .await
                .unwrap_or_default();
            for event in recent {
                let per_bucket = self
                    .redis
                    .bucket_states(crate::loading::event_buckets(&event))
                    .await
                    .ok();
                let state = per_bucket
                    .as_ref()
                    .map(|b| SaleState::merged(&b.iter().map(|(_, s)| *s).collect::<Vec<_>>()));
                let buckets = match &per_bucket {
                    Some(b) if b.len() > 1 => b
                        .iter()
                        .map(|(bucket, s)| BucketSample {
                            index: bucket.index,
                            slot: bucket.slot(),
                            stock_left: s.stock_left.filter(|_| s.loaded),
                            pending: s.pending,
                            moved_in: s.moved_in,
                            moved_out: s.moved_out,
                            in_flight: s.in_flight,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let stock_left = state.and_then(|s| s.stock_left.filter(|_| s.loaded));
                let info = infos.entry(event.id).or_insert_with(|| EventInfo {
                    id: event.id,
                    name: String::new(),
                    price: 0,
                    stock_total: 0,
                    starts_at_ms: 0,
                    ends_at_ms: 0,
                    sold_out_at_ms: None,
                });
                info.name = event.name.clone();
                info.price = event.price;
                info.stock_total = event.stock_total;
                info.starts_at_ms = event.starts_at.timestamp_millis();
                info.ends_at_ms = event.ends_at.timestamp_millis();
                if stock_left == Some(0) && info.sold_out_at_ms.is_none() && event.stock_total > 0 {
                    info.sold_out_at_ms = Some(at_ms);
                } else if stock_left.is_some_and(|s| s > 0) {
                    info.sold_out_at_ms = None;
                }
                let (cancelled, refunded) = refunds
                    .iter()
                    .find(|r| r.0 == event.id)
                    .map_or((0, 0), |r| (r.1, r.2));
                events.push(EventSample {
                    id: event.id,
                    stock_left,
                    pending: state.map_or(0, |s| s.pending),
                    sold: event.sold,
                    cancelled,
                    refunded,
                    adjusted: adjusted.iter().find(|a| a.0 == event.id).map_or(0, |a| a.1),
                    paused: event.paused_at.is_some(),
                    buckets,
                });
            }
        }
        let (outbox_backlog, outbox_lag_s) = self.outbox.get();
        Sample {
            at_ms,
            purchases,
            p99_ms: p99_ms(&last.latency_buckets, &now.latency_buckets),
            drained: ((now.persisted - last.persisted) / seconds).max(0.0),
            channel_depth: self.writers.depth(),
            outbox_backlog,
            outbox_lag_s,
            events,
            counters: now,
        }
    }
}

/// An alert the page shows while it holds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub name: &'static str,
    pub detail: String,
}

/// The alerts that hold over the last samples (newest last).
pub fn alerts(ring: &VecDeque<Sample>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let (Some(newest), Some(window_start)) = (
        ring.back(),
        ring.get(ring.len().saturating_sub(ALERT_WINDOW)),
    ) else {
        return alerts;
    };
    let (now, then) = (&newest.counters, &window_start.counters);
    let grew = |a: f64, b: f64| (a - b).max(0.0);
    if grew(now.discrepancies, then.discrepancies) > 0.0 {
        alerts.push(Alert {
            name: "drift",
            detail: format!(
                "the reconciler recorded {} discrepancies in the last minute",
                grew(now.discrepancies, then.discrepancies)
            ),
        });
    }
    if grew(now.channel_full, then.channel_full) > 0.0 {
        alerts.push(Alert {
            name: "channel full",
            detail: format!(
                "{} accepted purchases left to the ledger replay in the last minute",
                grew(now.channel_full, then.channel_full)
            ),
        });
    }
    if grew(now.writer_retries, then.writer_retries) > 0.0 {
        alerts.push(Alert {
            name: "writer retries",
            detail: format!(
                "{} writer batches retried in the last minute",
                grew(now.writer_retries, then.writer_retries)
            ),
        });
    }
    // Intents pending while the event's committed sales do not move: the
    // writers (of every engine) are not getting them into Postgres.
    for event in &newest.events {
        let stalled = ring
            .iter()
            .rev()
            .take_while(|s| {
                s.events
                    .iter()
                    .any(|e| e.id == event.id && e.pending > 0 && e.sold == event.sold)
            })
            .count();
        if stalled >= OLD_INTENTS_AFTER {
            alerts.push(Alert {
                name: "old intents",
                detail: format!(
                    "event {}: {} intents pending and nothing committed for {stalled} s",
                    event.id, event.pending
                ),
            });
        }
    }
    if newest.outbox_lag_s > OUTBOX_LAG_ALERT_SECONDS {
        alerts.push(Alert {
            name: "outbox lag",
            detail: format!(
                "oldest unpublished order event is {:.0} s old ({} owed to NATS)",
                newest.outbox_lag_s, newest.outbox_backlog
            ),
        });
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE seckill_purchases_total counter
seckill_purchases_total{outcome="accepted"} 10
seckill_purchases_total{outcome="sold_out"} 5
seckill_purchase_seconds_bucket{le="0.001"} 90
seckill_purchase_seconds_bucket{le="0.005"} 99
seckill_purchase_seconds_bucket{le="0.01"} 100
seckill_purchase_seconds_bucket{le="+Inf"} 100
seckill_orders_persisted_total{status="confirmed"} 7
seckill_orders_persisted_total{status="failed"} 1
"#;

    #[test]
    fn counters_and_the_p99_bucket_come_from_the_rendered_metrics() {
        let c = Counters::parse(TEXT);
        assert_eq!(c.purchases["accepted"], 10.0);
        assert_eq!(c.purchases["sold_out"], 5.0);
        assert_eq!(c.persisted, 8.0);
        assert_eq!(p99_ms(&[], &c.latency_buckets), Some(5.0));
        assert_eq!(p99_ms(&c.latency_buckets, &c.latency_buckets), None);
    }

    fn sample(pending: i64, discrepancies: f64) -> Sample {
        Sample {
            at_ms: 0,
            purchases: BTreeMap::new(),
            p99_ms: None,
            drained: 0.0,
            channel_depth: 0,
            outbox_backlog: 0,
            outbox_lag_s: 0.0,
            events: vec![EventSample {
                id: 1,
                stock_left: Some(3),
                pending,
                sold: 0,
                cancelled: 0,
                refunded: 0,
                adjusted: 0,
                paused: false,
                buckets: Vec::new(),
            }],
            counters: Counters {
                discrepancies,
                ..Default::default()
            },
        }
    }

    #[test]
    fn alerts_hold_only_while_their_condition_does() {
        let mut ring: VecDeque<Sample> = (0..12).map(|_| sample(4, 0.0)).collect();
        let names =
            |r: &VecDeque<Sample>| alerts(r).into_iter().map(|a| a.name).collect::<Vec<_>>();
        assert_eq!(names(&ring), vec!["old intents"]);
        // Pending but draining (sales moving) is a busy sale, not an alert.
        for (i, s) in ring.iter_mut().enumerate() {
            s.events[0].sold = i as i64;
        }
        assert_eq!(names(&ring), Vec::<&str>::new());
        for s in ring.iter_mut() {
            s.events[0].sold = 0;
        }
        ring.push_back(sample(0, 2.0));
        assert_eq!(names(&ring), vec!["drift"]);
    }
}
