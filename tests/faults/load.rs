//! The load driver: concurrent shoppers, each a fresh user firing one
//! purchase, recording exactly what the client was told.
//!
//! A request that could not connect was certainly not processed, so the same
//! user retries it (on the next engine, if there are several); any other
//! failure (timeout, reset, 5xx) is "unknown": it may or may not have bought.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use seckill::auth::Auth;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::harness::{Sale, ADMIN_TOKEN, JWT_SECRET};

/// What one HTTP attempt ended with, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 202 with this order_no.
    Accepted(Uuid),
    /// A definite answer other than 202: (status, error code).
    Rejected(u16, String),
    /// Could not connect: nothing was sent.
    NotSent,
    /// Timeout, dropped connection or 5xx: may or may not have bought.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Attempt {
    pub user: i64,
    pub engine: usize,
    /// Since the load started.
    pub sent: Duration,
    pub answered: Duration,
    pub outcome: Outcome,
}

pub struct LoadPlan {
    pub urls: Vec<String>,
    pub tasks: usize,
    /// Pause of each task between its requests (zero: full speed).
    pub pace: Duration,
    pub timeout: Duration,
    /// Each shopper sends `Idempotency-Key: k-<user>` (see [`shopper_key`]).
    pub keyed: bool,
}

/// The Idempotency-Key a keyed load gives a shopper's purchase.
pub fn shopper_key(user: i64) -> String {
    format!("k-{user}")
}

impl Default for LoadPlan {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl LoadPlan {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            tasks: 32,
            pace: Duration::from_millis(40),
            timeout: Duration::from_secs(2),
            keyed: false,
        }
    }
}

struct Shared {
    next_user: AtomicI64,
    last_user: i64,
    stop: AtomicBool,
    finish_on_sold_out: AtomicBool,
    accepted: AtomicUsize,
    unknown: AtomicUsize,
    attempts: Mutex<Vec<Attempt>>,
}

pub struct Load {
    shared: Arc<Shared>,
    started: Instant,
    tasks: Vec<JoinHandle<()>>,
}

impl Shared {
    fn new(first_user: i64, last_user: i64) -> Arc<Self> {
        Arc::new(Self {
            next_user: AtomicI64::new(first_user),
            last_user,
            stop: AtomicBool::new(false),
            finish_on_sold_out: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            unknown: AtomicUsize::new(0),
            attempts: Mutex::new(Vec::new()),
        })
    }
}

impl Load {
    /// A load with no shoppers (what is left once a load was joined).
    pub fn idle() -> Self {
        Self {
            shared: Shared::new(1, 0),
            started: Instant::now(),
            tasks: Vec::new(),
        }
    }

    pub fn start(plan: LoadPlan, sale: &Sale) -> Self {
        let shared = Shared::new(sale.first_user, sale.first_user + sale.users - 1);
        let client = reqwest::Client::builder()
            .timeout(plan.timeout)
            .pool_max_idle_per_host(plan.tasks * 2)
            .build()
            .expect("load client");
        let auth = Arc::new(Auth::new(JWT_SECRET.as_bytes(), ADMIN_TOKEN));
        let urls = Arc::new(plan.urls);
        let started = Instant::now();
        let tasks = (0..plan.tasks)
            .map(|_| {
                let worker = Worker {
                    shared: shared.clone(),
                    client: client.clone(),
                    auth: auth.clone(),
                    urls: urls.clone(),
                    event_id: sale.event_id,
                    pace: plan.pace,
                    keyed: plan.keyed,
                    started,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Self {
            shared,
            started,
            tasks,
        }
    }

    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    pub fn unknown(&self) -> usize {
        self.shared.unknown.load(Ordering::Relaxed)
    }

    /// Time since the load started, on the clock `Attempt::sent` uses.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every attempt so far (the load goes on).
    pub fn attempts_so_far(&self) -> Vec<Attempt> {
        self.shared.attempts.lock().unwrap().clone()
    }

    /// Waits until at least `n` purchases were accepted; panics after `within`.
    pub async fn wait_accepted(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepted() < n {
            assert!(
                Instant::now() < deadline,
                "load reached only {} of {n} accepted purchases within {within:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// From now on each shopper task stops once it is told `sold_out`.
    pub fn finish_when_sold_out(&self) {
        self.shared.finish_on_sold_out.store(true, Ordering::SeqCst);
    }

    /// Waits for the tasks to finish on their own (sold out, or out of
    /// users) for at most `within`, then stops them; returns every attempt.
    pub async fn join(self, within: Duration) -> Vec<Attempt> {
        self.finish_when_sold_out();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && self.tasks.iter().any(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let attempts = std::mem::take(&mut *self.shared.attempts.lock().unwrap());
        attempts
    }
}

struct Worker {
    shared: Arc<Shared>,
    client: reqwest::Client,
    auth: Arc<Auth>,
    urls: Arc<Vec<String>>,
    event_id: i64,
    pace: Duration,
    keyed: bool,
    started: Instant,
}

impl Worker {
    async fn run(self) {
        let s = &self.shared;
        while !s.stop.load(Ordering::SeqCst) {
            let user = s.next_user.fetch_add(1, Ordering::SeqCst);
            if user > s.last_user {
                return;
            }
            let token = self.auth.issue(user, 3600);
            let mut tries = 0usize;
            let outcome = loop {
                let engine = (user as usize + tries) % self.urls.len();
                let sent = self.started.elapsed();
                let key = self.keyed.then(|| shopper_key(user));
                let outcome = purchase(
                    &self.client,
                    &self.urls[engine],
                    self.event_id,
                    &token,
                    key.as_deref(),
                )
                .await;
                s.attempts.lock().unwrap().push(Attempt {
                    user,
                    engine,
                    sent,
                    answered: self.started.elapsed(),
                    outcome: outcome.clone(),
                });
                if outcome != Outcome::NotSent || s.stop.load(Ordering::SeqCst) {
                    break outcome;
                }
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            match &outcome {
                Outcome::Accepted(_) => {
                    s.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Unknown(_) => {
                    s.unknown.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Rejected(409, code)
                    if code == "sold_out" && s.finish_on_sold_out.load(Ordering::SeqCst) =>
                {
                    return;
                }
                _ => {}
            }
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
        }
    }
}

/// One purchase of one unit, as the client sees it.
pub async fn purchase(
    client: &reqwest::Client,
    base: &str,
    event_id: i64,
    token: &str,
    key: Option<&str>,
) -> Outcome {
    let mut request = client
        .post(format!("{base}/api/events/{event_id}/purchase"))
        .bearer_auth(token)
        .json(&json!({"quantity": 1}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let resp = match request.send().await {
        Ok(resp) => resp,
        Err(e) if e.is_connect() => return Outcome::NotSent,
        Err(e) if e.is_timeout() => return Outcome::Unknown("timeout".into()),
        Err(e) => return Outcome::Unknown(format!("transport: {e}")),
    };
    let status = resp.status().as_u16();
    let body = match resp.json::<Value>().await {
        Ok(body) => body,
        // Headers came but the body did not: the answer is unknown.
        Err(_) if status == 202 => return Outcome::Unknown("202 body lost".into()),
        Err(_) => Value::Null,
    };
    if status >= 500 {
        return Outcome::Unknown(format!("{status} {}", body["error"].as_str().unwrap_or("")));
    }
    if status == 202 {
        return match body["order_no"].as_str().and_then(|o| o.parse().ok()) {
            Some(order_no) => Outcome::Accepted(order_no),
            None => Outcome::Rejected(202, "202 without order_no".into()),
        };
    }
    Outcome::Rejected(status, body["error"].as_str().unwrap_or("").to_string())
}
