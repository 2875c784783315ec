//! The crowd: a fixed set of workers sharing one keep-alive connection pool,
//! each taking the next attempt from a shared counter, picking its shopper,
//! and recording every answer in a [`CrowdLog`]. In the closed loop a worker
//! sends as soon as it is free; in the open model ([`pace`]) it sends at the
//! attempt's due time, so the workers are a bounded pool of requests in
//! flight and an attempt no worker could take in time is dropped, counted.
//!
//! An attempt is one of three shapes: a single purchase; a retry (the same
//! `Idempotency-Key` sent twice, one after the other or both at once); or a
//! duplicate (the same shopper firing twice at once without a key, a double
//! click). Every HTTP request counts against the request budget.

mod log;
mod pace;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use bytes::Bytes;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use reqwest::header::HeaderValue;

pub use self::log::{CrowdLog, IdemPair, Sample, Shapes};
use self::{
    log::Timing,
    pace::{Pace, Turn},
};
use crate::{
    api::{Api, Outcome, PurchaseResult, Signer},
    plan::{Knobs, Plan},
};

/// Live counters for the progress bar.
#[derive(Debug)]
pub struct Progress {
    pub done: AtomicU64,
    pub accepted: AtomicU64,
    pub dropped: AtomicU64,
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
    /// The crowd of `plan` for event `event_id`, shoppers from `first_user_id`.
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
                dropped: AtomicU64::new(0),
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
        let pace = Pace::of(&self.plan, t0);
        let mut rng = SmallRng::seed_from_u64(0x5eed_0000 ^ id);
        let mut log = CrowdLog {
            samples: Vec::with_capacity((k.requests / k.concurrency as u64 + 16) as usize),
            ..CrowdLog::default()
        };
        loop {
            let shape = Shape::roll(&mut rng, &k);
            let ticket = self.tickets.fetch_add(shape.requests(), Ordering::Relaxed);
            if ticket >= k.requests {
                break;
            }
            let due = match pace.wait(ticket).await {
                Turn::Send(due) => due,
                Turn::Drop(due) => {
                    log.drop_late(t0, due, shape.requests());
                    self.progress
                        .dropped
                        .fetch_add(shape.requests(), Ordering::Relaxed);
                    continue;
                }
                Turn::Stop => break,
            };
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(shape, attempt, due, &mut rng, t0, &mut log)
                .await;
        }
        log
    }

    /// Sends the `attempt`th attempt, of `shape`, due at `due`, and records
    /// its answers.
    async fn attempt(
        &self,
        shape: Shape,
        attempt: u64,
        due: Instant,
        rng: &mut SmallRng,
        t0: Instant,
        log: &mut CrowdLog,
    ) {
        let user = self.user_for(attempt);
        let bearer = self.signer.bearer(user);
        let qty = self.plan.knobs.quantity;
        match shape {
            Shape::Single => {
                log.shapes.single += 1;
                let sent = Timing::now(due);
                let r = self.buy(&bearer, None).await;
                log.record(t0, sent, user, qty, &r);
                self.count(&[&r]);
                if let (Outcome::Accepted, Some(order_no)) = (r.outcome, r.order_no) {
                    let cancel_share = self.plan.knobs.cancel_share;
                    if cancel_share > 0.0 && rng.gen_bool(cancel_share) {
                        self.cancel(order_no, &bearer, log).await;
                    }
                }
            }
            Shape::Duplicate => {
                log.shapes.duplicate += 1;
                let sent = Timing::now(due);
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
                    let sent = Timing::now(due);
                    let (a, b) =
                        tokio::join!(self.buy(&bearer, Some(&key)), self.buy(&bearer, Some(&key)));
                    (sent, a, sent, b)
                } else {
                    let sent_a = Timing::now(due);
                    let a = self.buy(&bearer, Some(&key)).await;
                    // The retry is due when the first answer is in.
                    let sent_b = Timing::now(Instant::now());
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

    /// The shopper cancels their order: retried while it is `order_pending`
    /// (accepted, not persisted yet), for up to 10 s.
    async fn cancel(&self, order_no: uuid::Uuid, bearer: &HeaderValue, log: &mut CrowdLog) {
        for _ in 0..500 {
            match self.api.cancel(order_no, bearer.clone()).await {
                (200, _) => {
                    log.cancelled.push(order_no);
                    return;
                }
                (409, code) if code == "order_pending" => {
                    log.cancel_pending_retries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                (status, code) => {
                    *log.cancel_failures
                        .entry(format!("{status} {code}"))
                        .or_default() += 1;
                    return;
                }
            }
        }
        *log.cancel_failures
            .entry("still order_pending after 10 s".into())
            .or_default() += 1;
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

impl Shape {
    /// Draws the next attempt's shape with the plan's shares.
    fn roll(rng: &mut SmallRng, k: &Knobs) -> Self {
        let roll: f64 = rng.gen();
        if roll < k.retry_share {
            Shape::Retry
        } else if roll < k.retry_share + k.duplicate_share {
            Shape::Duplicate
        } else {
            Shape::Single
        }
    }

    /// HTTP requests an attempt of this shape sends.
    fn requests(self) -> u64 {
        if self == Shape::Single {
            1
        } else {
            2
        }
    }
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
