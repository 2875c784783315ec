//! The crowd: a fixed set of workers sharing one keep-alive connection pool,
//! each taking the next attempt from a shared counter, picking its shopper,
//! and recording every answer. Also the once-a-second stock poller.
//!
//! An attempt is one of three shapes: a single purchase; a retry (the same
//! `Idempotency-Key` sent twice, one after the other or both at once); or a
//! duplicate (the same shopper firing twice at once without a key, a double
//! click). Every HTTP request counts against the request budget.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use reqwest::header::HeaderValue;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    api::{AdminEvent, Api, Outcome, PurchaseResult, Signer},
    config::Plan,
};

/// One request as the statistics need it (12 bytes; a million fit easily).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the answer arrived, µs after the sale started.
    pub at_us: u32,
    pub latency_us: u32,
    pub outcome: Outcome,
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
    pub accepted: Vec<AcceptedOrder>,
    /// Shoppers with at least one request whose effect is unknown.
    pub ambiguous_users: Vec<i64>,
    /// Shoppers with at least one request that got a verdict on the stock.
    pub sale_users: Vec<i64>,
    pub idem: Vec<IdemPair>,
    /// Unexpected answers by `"<status> <code>"`.
    pub unexpected: HashMap<String, u64>,
    pub shapes: Shapes,
}

impl CrowdLog {
    fn merge(&mut self, other: CrowdLog) {
        self.samples.extend(other.samples);
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
    }

    fn record(&mut self, t0: Instant, sent: Instant, user_id: i64, qty: i64, r: &PurchaseResult) {
        let at = sent.saturating_duration_since(t0) + r.latency;
        self.samples.push(Sample {
            at_us: micros(at),
            latency_us: micros(r.latency).max(1),
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
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Live counters for the progress bar.
#[derive(Debug)]
pub struct Progress {
    pub done: AtomicU64,
    pub accepted: AtomicU64,
}

/// What the workers share.
pub struct Crowd {
    pub api: Arc<Api>,
    pub signer: Arc<Signer>,
    pub plan: Plan,
    pub first_user_id: i64,
    pub purchase_url: reqwest::Url,
    /// Distinguishes this run's idempotency keys.
    pub run_tag: String,
    body: Bytes,
    stride: u64,
    tickets: AtomicU64,
    attempts: AtomicU64,
    pub progress: Progress,
}

impl Crowd {
    pub fn new(
        api: Arc<Api>,
        signer: Arc<Signer>,
        plan: Plan,
        first_user_id: i64,
        event_id: i64,
    ) -> anyhow::Result<Self> {
        let users = plan.knobs.users;
        Ok(Self {
            purchase_url: api.purchase_url(event_id)?,
            body: Bytes::from(format!(r#"{{"quantity":{}}}"#, plan.knobs.quantity)),
            stride: spread_stride(users),
            run_tag: format!("lt{event_id}"),
            api,
            signer,
            plan,
            first_user_id,
            tickets: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            progress: Progress {
                done: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
            },
        })
    }

    /// The shopper of the `n`th attempt: a bijection over the users (so the
    /// first `users` attempts are all different shoppers) that scatters
    /// neighbours, so payers and non-payers interleave.
    fn user_for(&self, attempt: u64) -> i64 {
        let users = self.plan.knobs.users;
        let idx = (u128::from(attempt % users) * u128::from(self.stride)) % u128::from(users);
        self.first_user_id + idx as i64
    }

    /// Runs the crowd from `t0` (the sale's start) until the request budget
    /// or the duration is used up, then returns what it saw.
    pub async fn fire(self: Arc<Self>, t0: Instant) -> CrowdLog {
        let workers: Vec<_> = (0..self.plan.knobs.concurrency)
            .map(|id| tokio::spawn(Arc::clone(&self).worker(id as u64, t0)))
            .collect();
        let mut log = CrowdLog::default();
        for w in workers {
            match w.await {
                Ok(part) => log.merge(part),
                Err(err) => eprintln!("loadtest: a worker panicked: {err}"),
            }
        }
        log
    }

    async fn worker(self: Arc<Self>, id: u64, t0: Instant) -> CrowdLog {
        let k = self.plan.knobs;
        let deadline = t0 + Duration::from_secs(k.duration_secs);
        let mut rng = SmallRng::seed_from_u64(0x5eed_0000 ^ id);
        let mut log = CrowdLog {
            samples: Vec::with_capacity((k.requests / k.concurrency as u64 + 16) as usize),
            ..CrowdLog::default()
        };
        loop {
            let roll: f64 = rng.gen();
            let shape = if roll < k.retry_share {
                Shape::Retry
            } else if roll < k.retry_share + k.duplicate_share {
                Shape::Duplicate
            } else {
                Shape::Single
            };
            let n = if shape == Shape::Single { 1 } else { 2 };
            let ticket = self.tickets.fetch_add(n, Ordering::Relaxed);
            if ticket >= k.requests || Instant::now() >= deadline {
                break;
            }
            if k.rate > 0 {
                let due = t0 + Duration::from_secs_f64(ticket as f64 / k.rate as f64);
                tokio::time::sleep_until(due.into()).await;
                if Instant::now() >= deadline {
                    break;
                }
            }
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
            let user = self.user_for(attempt);
            let bearer = self.signer.bearer(user);
            let qty = k.quantity;
            match shape {
                Shape::Single => {
                    log.shapes.single += 1;
                    let sent = Instant::now();
                    let r = self.buy(&bearer, None).await;
                    log.record(t0, sent, user, qty, &r);
                    self.count(&[&r]);
                }
                Shape::Duplicate => {
                    log.shapes.duplicate += 1;
                    let sent = Instant::now();
                    let (a, b) = tokio::join!(self.buy(&bearer, None), self.buy(&bearer, None));
                    log.record(t0, sent, user, qty, &a);
                    log.record(t0, sent, user, qty, &b);
                    self.count(&[&a, &b]);
                }
                Shape::Retry => {
                    log.shapes.retry += 1;
                    let key = format!("{}-{attempt}", self.run_tag);
                    let concurrent = rng.gen_bool(0.5);
                    let (sent_a, a, sent_b, b) = if concurrent {
                        let sent = Instant::now();
                        let (a, b) = tokio::join!(
                            self.buy(&bearer, Some(&key)),
                            self.buy(&bearer, Some(&key))
                        );
                        (sent, a, sent, b)
                    } else {
                        let sent_a = Instant::now();
                        let a = self.buy(&bearer, Some(&key)).await;
                        let sent_b = Instant::now();
                        let b = self.buy(&bearer, Some(&key)).await;
                        (sent_a, a, sent_b, b)
                    };
                    log.record(t0, sent_a, user, qty, &a);
                    log.record(t0, sent_b, user, qty, &b);
                    log.idem.push(IdemPair {
                        user_id: user,
                        concurrent,
                        first: (a.outcome, a.order_no),
                        second: (b.outcome, b.order_no),
                    });
                    self.count(&[&a, &b]);
                }
            }
        }
        log
    }

    async fn buy(&self, bearer: &HeaderValue, key: Option<&str>) -> PurchaseResult {
        self.api
            .purchase(&self.purchase_url, bearer.clone(), self.body.clone(), key)
            .await
    }

    fn count(&self, results: &[&PurchaseResult]) {
        let accepted = results
            .iter()
            .filter(|r| r.outcome == Outcome::Accepted)
            .count() as u64;
        self.progress
            .done
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        if accepted > 0 {
            self.progress
                .accepted
                .fetch_add(accepted, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Single,
    Retry,
    Duplicate,
}

/// A multiplier coprime with `users`, near the golden section, so that
/// `i * stride mod users` visits every shopper once per round, scattered.
fn spread_stride(users: u64) -> u64 {
    if users <= 2 {
        return 1;
    }
    let mut s = ((users as f64 * 0.618_033_988_7) as u64).max(1);
    while gcd(s, users) != 1 {
        s += 1;
    }
    s
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Stock and drain figures of one poll.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StockPoint {
    /// Seconds after the sale started (negative: before it).
    pub t_secs: f64,
    pub stock_left: i64,
    pub sold: i64,
    pub pending: i64,
    pub failed: i64,
}

impl StockPoint {
    pub fn of(ev: &AdminEvent, t_secs: f64) -> Self {
        Self {
            t_secs,
            stock_left: ev.stock_left,
            sold: ev.sold,
            pending: ev.pending,
            failed: ev.failed,
        }
    }
}

/// Polls the admin event once a second until `stop` turns true; a failed
/// poll is skipped (the engine may be busy), not fatal. `before` is a poll
/// made just before the start, shown at t = 0.
pub async fn poll_stock(
    api: Arc<Api>,
    event_id: i64,
    t0: Instant,
    before: Option<StockPoint>,
    mut stop: watch::Receiver<bool>,
) -> Vec<StockPoint> {
    let mut points: Vec<StockPoint> = before.into_iter().collect();
    let first = t0 + Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(first.into(), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let asked = Instant::now();
        if let Ok(ev) = api.event(event_id).await {
            let t = asked.saturating_duration_since(t0).as_secs_f64();
            points.push(StockPoint::of(&ev, t));
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_is_a_bijection() {
        for users in [1u64, 2, 3, 10, 500, 1_000, 4_096, 100_000] {
            let s = spread_stride(users);
            let mut seen = vec![false; users as usize];
            for i in 0..users {
                let idx = ((u128::from(i) * u128::from(s)) % u128::from(users)) as usize;
                assert!(!seen[idx], "users={users} stride={s} repeats {idx}");
                seen[idx] = true;
            }
        }
    }
}
