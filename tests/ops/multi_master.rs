//! A hot sale on a Redis Cluster of three primaries with a replica each
//! ([`crate::redis_cluster`]), two `seckill serve` processes on one fresh
//! Postgres database behind HAProxy (round robin), a crowd of shoppers
//! buying through the balancer (issue 10).
//!
//! The hot event is created with `"stock_buckets": 6` (two buckets per
//! primary with `redis-cli --cluster create`'s slot split); the failover
//! test runs with one bucket too (the whole event on the killed primary).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    balancer::{Balance, HaProxy},
    redis_cluster::RedisCluster,
    rig::{Rig, ADMIN_TOKEN},
};

const MASTERS: usize = 3;
const STOCK: i64 = 3_000;
const BUCKETS: i64 = 6;
const LIMIT: i64 = 2;
const PRICE: i64 = 100;
const BALANCE: i64 = 10_000;
/// Shoppers of the crowd (ids 1..=CROWD); demand 2 × CROWD > STOCK.
const CROWD: i64 = 5_000;
/// Funded shoppers after the crowd (ids CROWD+1..), who buy what a
/// finished transfer or a repair brings back once the crowd has gone.
const STRAGGLERS: i64 = 1_000;
/// Requests in flight at once through the balancer.
const CONCURRENCY: usize = 300;
const NODE_TIMEOUT_MS: u64 = 1_000;
/// How long the killed primary's replica takes nothing from it first.
const LAG: Duration = Duration::from_millis(500);

/// What one purchase request ended with, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted(Uuid),
    /// A definite answer other than 202: (status, error code).
    Rejected(u16, String),
    /// Timeout, transport error or 5xx: it may or may not have bought.
    Unknown(String),
}

#[derive(Clone, Debug)]
struct Attempt {
    user: i64,
    /// Since the sale's clock started.
    sent: Duration,
    answered: Duration,
    outcome: Outcome,
}

/// Everything one test runs against.
struct Sale {
    lb: HaProxy,
    rig: Rig,
    cluster: RedisCluster,
    db: PgPool,
    event: i64,
    /// Buckets the engine made (1 when it does not know `stock_buckets`).
    buckets: i64,
    clock: Instant,
    http: reqwest::Client,
    auth: Arc<seckill::auth::Auth>,
}

impl Sale {
    async fn open(name: &str, buckets: i64) -> Self {
        let started = Instant::now();
        let cluster = RedisCluster::start(MASTERS, 1, NODE_TIMEOUT_MS).await;
        println!(
            "cluster up in {:.1} s: primaries {:?}, replicas {:?}",
            started.elapsed().as_secs_f64(),
            cluster.master_ports(),
            cluster.replica_ports()
        );
        let mut rig = Rig::new(name).await;
        let url = cluster.url();
        let settings = [
            ("SECKILL_REDIS_URL", url.as_str()),
            ("SECKILL_RECONCILE_INTERVAL_MS", "1000"),
            ("SECKILL_RECONCILE_GRACE_MS", "500"),
            ("SECKILL_REDIS_TIMEOUT_MS", "1000"),
            ("SECKILL_NATS_URL", "off"),
            ("SECKILL_DATABASE_POOL", "8"),
        ];
        rig.start_engine(&settings).await;
        rig.start_engine(&settings).await;
        let ports: Vec<u16> = rig.engines.iter().map(|e| e.port).collect();
        // Health checks may take a second: a busy debug engine answers
        // /readyz in more than the default 200 ms, and would be marked DOWN.
        let lb = HaProxy::start_balanced(
            &rig.dir,
            &ports,
            Balance::RoundRobin,
            Some(Duration::from_secs(1)),
        );
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&rig.db_url)
            .await
            .expect("test's own pool");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(12))
            .pool_max_idle_per_host(CONCURRENCY * 2)
            .build()
            .unwrap();
        let auth = Arc::new(seckill::auth::Auth::new(
            crate::rig::JWT_SECRET.as_bytes(),
            ADMIN_TOKEN,
        ));
        let mut sale = Self {
            lb,
            rig,
            cluster,
            db,
            event: 0,
            buckets: 1,
            clock: Instant::now(),
            http,
            auth,
        };
        sale.wait_balancer().await;
        sale.create_event(buckets).await;
        println!(
            "sale {} open ({} bucket(s)) after {:.1} s",
            sale.event,
            sale.buckets,
            started.elapsed().as_secs_f64()
        );
        sale.clock = Instant::now();
        sale
    }

    async fn wait_balancer(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self
            .http
            .get(self.lb.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            assert!(Instant::now() < deadline, "haproxy never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The event of `buckets` stock buckets, the wallets, the preheat.
    async fn create_event(&mut self, buckets: i64) {
        let now = chrono::Utc::now();
        let body = json!({
            "name": "hot item", "price": PRICE, "stock": STOCK, "per_user_limit": LIMIT,
            "starts_at": (now - chrono::Duration::seconds(5)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "stock_buckets": buckets,
        });
        let r = self
            .http
            .post(self.rig.url(0, "/admin/events"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, created) = (r.status(), r.json::<Value>().await.unwrap_or_default());
        assert_eq!(status, StatusCode::CREATED, "{created}");
        self.event = created["id"].as_i64().unwrap();
        self.buckets = created["stock_buckets"].as_i64().unwrap_or(1);
        assert_eq!(self.buckets, buckets, "{created}");
        self.rig
            .admin(
                0,
                Method::POST,
                "/admin/wallets/seed",
                json!({"first_user_id": 1, "count": CROWD + STRAGGLERS, "balance": BALANCE}),
            )
            .await;
        self.rig
            .admin(
                0,
                Method::POST,
                &format!("/admin/events/{}/preheat", self.event),
                Value::Null,
            )
            .await;
    }

    /// The crowd in the order it arrives: a deterministic shuffle with
    /// every shopper whose home bucket is 0 up front, so that bucket runs
    /// dry long before the others and stock has to move to it.
    fn crowd_order(&self) -> Vec<i64> {
        let mut users: Vec<i64> = (1..=CROWD).collect();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..users.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            users.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        users.sort_by_key(|u| u % BUCKETS != 0);
        users
    }

    fn start_crowd(&self, shoppers: Vec<i64>, concurrency: usize) -> Crowd {
        Crowd::start(
            self.http.clone(),
            self.auth.clone(),
            self.lb.url(&format!("/api/events/{}/purchase", self.event)),
            shoppers,
            concurrency,
            self.clock,
        )
    }

    async fn admin_get(&self, path: &str) -> Result<Value, String> {
        let mut last = String::new();
        for engine in 0..self.rig.engines.len() {
            match self
                .http
                .get(self.rig.url(engine, path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {
                    return r.json().await.map_err(|e| e.to_string())
                }
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    async fn view(&self) -> Result<Value, String> {
        self.admin_get(&format!("/admin/events/{}", self.event))
            .await
    }

    async fn invariants(&self) -> Result<Value, String> {
        self.admin_get(&format!("/admin/events/{}/invariants", self.event))
            .await
    }

    /// `POST /admin/reconcile` on whichever engine leads the reconciler.
    async fn reconcile(&self) -> Result<Value, String> {
        let mut last = String::new();
        for engine in 0..self.rig.engines.len() {
            let r = match self
                .http
                .post(self.rig.url(engine, "/admin/reconcile"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            if status == StatusCode::OK {
                return Ok(body);
            }
            last = format!("{status} {body}");
        }
        Err(last)
    }

    /// After the crowd: reconciler passes (the engines run one a second,
    /// plus one asked for here) until nothing is pending and no stock is
    /// left; whatever stock comes back (a transfer finished, a repair) is
    /// bought by fresh shoppers. At most `within`.
    async fn settle(&self, within: Duration) -> Settled {
        let started = Instant::now();
        let mut next_straggler = CROWD + 1;
        let mut attempts = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let _ = self.reconcile().await;
            let view = self.view().await.unwrap_or_default();
            let stock_left = view["stock_left"].as_i64().unwrap_or(-1);
            let pending = view["pending"].as_i64().unwrap_or(-1);
            // Units a bucket gave whose arrival is not confirmed yet.
            let in_flight: i64 = buckets_of(&view)
                .iter()
                .map(|b| b["in_flight"].as_i64().unwrap_or(0))
                .sum();
            if stock_left == 0 && pending == 0 && in_flight == 0 {
                return Settled {
                    rounds,
                    took: started.elapsed(),
                    attempts,
                    settled: true,
                };
            }
            if started.elapsed() > within {
                println!("NOT settled: {view}");
                return Settled {
                    rounds,
                    took: started.elapsed(),
                    attempts,
                    settled: false,
                };
            }
            if stock_left > 0 && next_straggler <= CROWD + STRAGGLERS {
                let n = stock_left.min(CROWD + STRAGGLERS + 1 - next_straggler);
                let shoppers: Vec<i64> = (next_straggler..next_straggler + n).collect();
                next_straggler += n;
                println!("settle: stock_left {stock_left}, pending {pending}, in flight {in_flight}: {n} stragglers buy");
                attempts.extend(self.start_crowd(shoppers, 50).join().await);
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Stops the processes, drops the database, removes the dirs.
    async fn finish(self) {
        let Self {
            lb,
            rig,
            cluster,
            db,
            ..
        } = self;
        drop(lb);
        // Health-check verdicts (an engine marked DOWN answers 503 from HAProxy).
        let log = std::fs::read_to_string(rig.dir.join("haproxy.log")).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains(" is DOWN") || l.contains(" is UP"))
        {
            println!("haproxy: {line}");
        }
        db.close().await;
        rig.finish().await;
        drop(cluster);
    }
}

struct Settled {
    rounds: usize,
    took: Duration,
    attempts: Vec<Attempt>,
    settled: bool,
}

/// The view's `buckets` (empty when the engine has none).
fn buckets_of(view: &Value) -> Vec<Value> {
    view["buckets"].as_array().cloned().unwrap_or_default()
}

/// Concurrent shoppers, each buying one unit at a time up to the limit.
struct Crowd {
    accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Crowd {
    fn start(
        http: reqwest::Client,
        auth: Arc<seckill::auth::Auth>,
        url: String,
        shoppers: Vec<i64>,
        concurrency: usize,
        clock: Instant,
    ) -> Self {
        let queue = Arc::new(shoppers);
        let next = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = (0..concurrency)
            .map(|_| {
                let (http, auth, url) = (http.clone(), auth.clone(), url.clone());
                let (queue, next, accepted) = (queue.clone(), next.clone(), accepted.clone());
                tokio::spawn(async move {
                    let mut attempts = Vec::new();
                    while let Some(&user) = queue.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let token = auth.issue(user, 3600);
                        let (mut bought, mut unknown) = (0, 0);
                        while bought < LIMIT && unknown < 10 {
                            let sent = clock.elapsed();
                            let outcome = purchase(&http, &url, &token).await;
                            attempts.push(Attempt {
                                user,
                                sent,
                                answered: clock.elapsed(),
                                outcome: outcome.clone(),
                            });
                            match outcome {
                                Outcome::Accepted(_) => {
                                    bought += 1;
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                }
                                Outcome::Unknown(_) => {
                                    unknown += 1;
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                // sold_out, limit_exceeded, anything else: done.
                                Outcome::Rejected(..) => break,
                            }
                        }
                    }
                    attempts
                })
            })
            .collect();
        Self { accepted, tasks }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    async fn join(self) -> Vec<Attempt> {
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("shopper task"));
        }
        all
    }
}

async fn purchase(http: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let resp = match http
        .post(url)
        .bearer_auth(token)
        .json(&json!({"quantity": 1}))
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(e) if e.is_timeout() => return Outcome::Unknown("timeout".into()),
        Err(e) => return Outcome::Unknown(format!("transport: {e}")),
    };
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    match status {
        202 => match body["order_no"].as_str().and_then(|o| o.parse().ok()) {
            Some(order_no) => Outcome::Accepted(order_no),
            None => Outcome::Unknown("202 without order_no".into()),
        },
        500.. => Outcome::Unknown(format!("{status} {}", body["error"].as_str().unwrap_or(""))),
        _ => Outcome::Rejected(status, body["error"].as_str().unwrap_or("").to_string()),
    }
}

/// When the first `sold_out` was answered, and how many 202s answered
/// requests sent after it (a sold_out while units were left or in flight).
fn after_first_sold_out(attempts: &[Attempt]) -> (Option<Duration>, usize) {
    let first = attempts
        .iter()
        .filter(|a| matches!(&a.outcome, Outcome::Rejected(409, c) if c == "sold_out"))
        .map(|a| a.answered)
        .min();
    let later = first.map_or(0, |t| {
        attempts
            .iter()
            .filter(|a| a.sent > t && matches!(a.outcome, Outcome::Accepted(_)))
            .count()
    });
    {
        if let Some(last_202) = attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Accepted(_)))
            .map(|a| a.sent)
            .max()
        {
            let early: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| matches!(&a.outcome, Outcome::Rejected(409, c) if c == "sold_out"))
                .filter(|a| a.answered < last_202)
                .collect();
            let mut homes = [0usize; BUCKETS as usize];
            for a in &early {
                homes[(a.user % BUCKETS) as usize] += 1;
            }
            let mut times: Vec<f64> = early.iter().map(|a| a.answered.as_secs_f64()).collect();
            times.sort_by(f64::total_cmp);
            println!(
                "{} sold_out answered before the last 202 was sent ({:.2} s): by home bucket (of 6) {homes:?}, first at {:?}, last at {:?}",
                early.len(),
                last_202.as_secs_f64(),
                times.first(),
                times.last()
            );
        }
    }
    (first, later)
}

fn tally(attempts: &[Attempt]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for a in attempts {
        let key = match &a.outcome {
            Outcome::Accepted(_) => "202".to_string(),
            Outcome::Rejected(s, c) => format!("{s} {c}"),
            Outcome::Unknown(why) => format!("unknown ({why})"),
        };
        *counts.entry(key).or_default() += 1;
    }
    format!("{counts:?}")
}

/// What Postgres holds, held against what the clients were told.
struct Truth {
    /// order_no -> (user, status, quantity, failure_reason)
    orders: HashMap<Uuid, (i64, String, i32, Option<String>)>,
    confirmed_units: i64,
    /// 202s whose order_no is in no row.
    lost: Vec<Uuid>,
    /// 202s whose row belongs to another shopper.
    wrong_user: usize,
    /// order_nos answered by more than one 202.
    duplicate_202s: usize,
    /// Shoppers with more orders without a 202 than unknown answers.
    unexplained: Vec<(i64, usize, usize)>,
    /// Wallets whose debits, payments or balance differ from their
    /// confirmed orders (count, sum), and debits of non-confirmed orders.
    money_off: Vec<String>,
    debits_of_unconfirmed: i64,
    /// Σ units of a shopper's non-failed orders over the limit.
    over_limit: usize,
    accepted: usize,
    unknown: usize,
}

impl Truth {
    async fn read(db: &PgPool, event: i64, attempts: &[Attempt]) -> Self {
        let rows: Vec<(Uuid, i64, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT order_no, user_id, status, quantity, failure_reason FROM orders WHERE event_id = $1",
        )
        .bind(event)
        .fetch_all(db)
        .await
        .expect("orders");
        let orders: HashMap<Uuid, (i64, String, i32, Option<String>)> = rows
            .into_iter()
            .map(|(o, u, s, q, r)| (o, (u, s, q, r)))
            .collect();
        let confirmed_units = orders
            .values()
            .filter(|o| o.1 == "confirmed")
            .map(|o| i64::from(o.2))
            .sum();

        let mut accepted: HashMap<Uuid, i64> = HashMap::new();
        let mut duplicate_202s = 0;
        let mut unknown_per_user: HashMap<i64, usize> = HashMap::new();
        for a in attempts {
            match &a.outcome {
                Outcome::Accepted(o) => {
                    if accepted.insert(*o, a.user).is_some() {
                        duplicate_202s += 1;
                    }
                }
                Outcome::Unknown(_) => *unknown_per_user.entry(a.user).or_default() += 1,
                Outcome::Rejected(..) => {}
            }
        }
        let lost: Vec<Uuid> = accepted
            .keys()
            .filter(|o| !orders.contains_key(o))
            .copied()
            .collect();
        let wrong_user = accepted
            .iter()
            .filter(|(o, u)| orders.get(o).is_some_and(|row| row.0 != **u))
            .count();
        let mut without_202: HashMap<i64, usize> = HashMap::new();
        for (o, row) in &orders {
            if !accepted.contains_key(o) {
                *without_202.entry(row.0).or_default() += 1;
            }
        }
        let unexplained = without_202
            .iter()
            .map(|(u, n)| (*u, *n, unknown_per_user.get(u).copied().unwrap_or(0)))
            .filter(|(_, n, unknown)| n > unknown)
            .collect();
        let mut units: HashMap<i64, i64> = HashMap::new();
        for row in orders.values().filter(|r| r.1 != "failed") {
            *units.entry(row.0).or_default() += i64::from(row.2);
        }
        let over_limit = units.values().filter(|n| **n > LIMIT).count();

        let wallets: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "WITH c AS (SELECT user_id, count(*) AS n, sum(amount)::int8 AS spent
                        FROM orders WHERE status = 'confirmed' GROUP BY user_id),
                  d AS (SELECT user_id, count(*) AS n, sum(amount)::int8 AS debited
                        FROM wallet_debits GROUP BY user_id),
                  p AS (SELECT user_id, count(*) AS n FROM payments GROUP BY user_id)
             SELECT w.user_id, w.balance, coalesce(c.n, 0), coalesce(c.spent, 0),
                    coalesce(d.n, 0), coalesce(d.debited, 0), coalesce(p.n, 0)
             FROM wallets w LEFT JOIN c USING (user_id) LEFT JOIN d USING (user_id)
                  LEFT JOIN p USING (user_id)",
        )
        .fetch_all(db)
        .await
        .expect("wallets");
        let money_off = wallets
            .iter()
            .filter(|(_, balance, n, spent, debits, debited, payments)| {
                debits != n || debited != spent || payments != n || *balance != BALANCE - spent
            })
            .map(|w| {
                format!(
                    "user {} balance {} confirmed {} ({}) debits {} ({}) payments {}",
                    w.0, w.1, w.2, w.3, w.4, w.5, w.6
                )
            })
            .collect();
        let (debits_of_unconfirmed,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.status <> 'confirmed'",
        )
        .fetch_one(db)
        .await
        .expect("debits of unconfirmed orders");
        Self {
            orders,
            confirmed_units,
            lost,
            wrong_user,
            duplicate_202s,
            unexplained,
            money_off,
            debits_of_unconfirmed,
            over_limit,
            accepted: accepted.len(),
            unknown: unknown_per_user.values().sum(),
        }
    }

    fn failed_by_reason(&self) -> HashMap<String, usize> {
        let mut reasons = HashMap::new();
        for row in self.orders.values().filter(|r| r.1 == "failed") {
            *reasons
                .entry(row.3.clone().unwrap_or_default())
                .or_default() += 1;
        }
        reasons
    }

    /// What every test holds, whatever Redis went through: no double
    /// charge, no order for a refused request, limits, every 202 a row.
    fn assert_common(&self) {
        assert_eq!(self.duplicate_202s, 0, "one order_no answered twice");
        assert!(
            self.lost.is_empty() && self.wrong_user == 0,
            "I5: {} of {} acknowledged order_nos in no row (e.g. {:?}), {} with another user",
            self.lost.len(),
            self.accepted,
            self.lost.first(),
            self.wrong_user
        );
        assert!(
            self.unexplained.is_empty(),
            "orders without a 202 beyond the shopper's unknown answers (user, orders, unknowns): {:?}",
            &self.unexplained[..self.unexplained.len().min(5)]
        );
        assert!(
            self.money_off.is_empty() && self.debits_of_unconfirmed == 0,
            "wallets not charged exactly once per confirmed order: {} (e.g. {:?}); debits of unconfirmed orders {}",
            self.money_off.len(),
            self.money_off.first(),
            self.debits_of_unconfirmed
        );
        assert_eq!(self.over_limit, 0, "I3: shoppers over the limit");
    }
}

/// The invariant checker's report, printed; the names of failing checks.
fn failing_checks(report: &Value) -> Vec<String> {
    let mut failing = Vec::new();
    println!(
        "invariants of event {} (ok {}, drained {}):",
        report["event_id"], report["ok"], report["drained"]
    );
    for c in report["checks"].as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool() == Some(true);
        println!(
            "  [{}] {:<28} {}",
            if ok { "PASS" } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        );
        if !ok {
            failing.push(c["name"].as_str().unwrap_or("?").to_owned());
        }
    }
    failing
}

/// Each bucket's primary (by `CLUSTER NODES`), printed; with no `buckets`
/// in the view, the event's one hash tag.
fn bucket_masters(sale: &Sale, view: &Value) -> Vec<(i64, u16, u16)> {
    let buckets = buckets_of(view);
    if buckets.is_empty() {
        let key = seckill::redis::Keys::new(sale.rig.prefix.clone())
            .event(sale.event)
            .meta;
        let slot = sale.cluster.keyslot(&key);
        return vec![(0, slot, sale.cluster.master_of(slot))];
    }
    buckets
        .iter()
        .map(|b| {
            let slot = b["slot"].as_u64().expect("bucket slot") as u16;
            let tag = b["hash_tag"].as_str().expect("bucket hash_tag");
            let tagged = if tag.starts_with('{') {
                tag.to_owned()
            } else {
                format!("{{{tag}}}")
            };
            assert_eq!(
                sale.cluster.keyslot(&tagged),
                slot,
                "bucket {b}: its slot is its hash tag's"
            );
            let master = sale.cluster.master_of(slot);
            println!(
                "  bucket {} tag {tag} slot {slot} on :{master}: stock_left {} total {} held {} moved_in {} moved_out {} in_flight {} pending {} loaded {}",
                b["index"], b["stock_left"], b["total"], b["held"], b["moved_in"], b["moved_out"], b["in_flight"], b["pending"], b["loaded"]
            );
            (b["index"].as_i64().unwrap_or(-1), slot, master)
        })
        .collect()
}

/// Reconciler discrepancies recorded for the event, by kind.
async fn discrepancy_kinds(db: &PgPool, event: i64) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM reconcile_discrepancies WHERE event_id = $1 GROUP BY kind",
    )
    .bind(event)
    .fetch_all(db)
    .await
    .expect("discrepancies");
    rows.into_iter().collect()
}

/// Test A. One hot event split into 6 buckets (2 per primary) sold to a
/// crowd of 5 000 shoppers (300 requests in flight, each shopper buying
/// one unit at a time up to the limit of 2) through HAProxy and two
/// engines, until sold out. Then: every SPEC §5 invariant PASS from the
/// engine's checker; exactly the stock sold in Postgres (demand is 10 000
/// units for 3 000, and every shopper can pay: after the reconciler has
/// finished the transfers, with fresh shoppers buying what they bring
/// back, no unit is left); every wallet charged exactly once per confirmed
/// order; every 202 a confirmed order; no sold_out answered while units
/// were left (no 202 for a request sent after the first sold_out); a
/// reconciler pass after the sale repairs nothing (I8); the buckets on all
/// three primaries
/// (each bucket's slot mapped to its primary with `CLUSTER NODES`) and
/// stock moved between buckets (some bucket has `moved_in` > 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_item_sold_exactly_across_all_masters() {
    hot_item().await;
}

async fn hot_item() {
    let started = Instant::now();
    let sale = Sale::open("cluster-hot", BUCKETS).await;

    let crowd = sale.start_crowd(sale.crowd_order(), CONCURRENCY);
    let mut attempts = crowd.join().await;
    let crowd_took = sale.clock.elapsed();
    println!(
        "crowd done in {:.1} s: {}",
        crowd_took.as_secs_f64(),
        tally(&attempts)
    );
    let (first_sold_out, later) = after_first_sold_out(&attempts);
    println!(
        "first sold_out answered at {first_sold_out:?}; 202s for requests sent later: {later}"
    );
    // README: "Sold out is answered … only after every bucket was read
    // empty with no unit in flight"; nothing fails or is refunded here, so
    // no unit comes back after it.
    assert_eq!(later, 0, "202s after a sold_out answer: it was premature");
    let settled = sale.settle(Duration::from_secs(30)).await;
    println!(
        "settled {} after {} rounds, {:.1} s: stragglers {}",
        settled.settled,
        settled.rounds,
        settled.took.as_secs_f64(),
        tally(&settled.attempts)
    );
    attempts.extend(settled.attempts);
    assert!(
        settled.settled,
        "stock left or intents pending after 30 s of reconciler passes"
    );

    // The reconciler has nothing left to repair, and the checker passes.
    let report = sale.reconcile().await.expect("reconcile");
    let report = if report["discrepancies"]
        .as_array()
        .is_some_and(|d| d.is_empty())
    {
        report
    } else {
        sale.reconcile().await.expect("second reconcile")
    };
    assert!(
        report["discrepancies"]
            .as_array()
            .is_some_and(|d| d.is_empty()),
        "I8: a reconciler pass after the sale still repairs: {report:#}"
    );
    let checker = sale.invariants().await.expect("invariants");
    let failing = failing_checks(&checker);
    assert!(
        failing.is_empty() && checker["ok"] == true && checker["drained"] == true,
        "the checker's report: failing {failing:?}"
    );

    let truth = Truth::read(&sale.db, sale.event, &attempts).await;
    println!(
        "postgres: {} orders, {} confirmed units, failed {:?}; {} 202s, {} unknown answers",
        truth.orders.len(),
        truth.confirmed_units,
        truth.failed_by_reason(),
        truth.accepted,
        truth.unknown
    );
    truth.assert_common();
    assert_eq!(
        truth.confirmed_units, STOCK,
        "exactly the stock sold (no oversell, no undersell)"
    );
    assert!(
        truth.failed_by_reason().is_empty(),
        "every shopper could pay: no failed order"
    );
    if truth.unknown == 0 {
        assert_eq!(truth.accepted as i64, STOCK, "one 202 per unit sold");
    }

    let view = sale.view().await.expect("event view");
    let masters = bucket_masters(&sale, &view);
    {
        assert_eq!(view["stock_buckets"], BUCKETS, "{view}");
        assert_eq!(masters.len() as i64, BUCKETS, "{view}");
        let on: BTreeSet<u16> = masters.iter().map(|m| m.2).collect();
        assert_eq!(
            on.into_iter().collect::<Vec<_>>(),
            sale.cluster.master_ports(),
            "buckets on every primary"
        );
        let moved_in: i64 = buckets_of(&view)
            .iter()
            .map(|b| b["moved_in"].as_i64().unwrap_or(0))
            .sum();
        let moved_out: i64 = buckets_of(&view)
            .iter()
            .map(|b| b["moved_out"].as_i64().unwrap_or(0))
            .sum();
        assert!(moved_in > 0, "stock moved between buckets: {view}");
        assert_eq!(moved_in, moved_out, "every transfer finished: {view}");
        for b in buckets_of(&view) {
            assert_eq!(b["stock_left"], 0, "bucket empty: {b}");
            assert_eq!(b["pending"], 0, "no intent pending: {b}");
            assert_eq!(b["in_flight"], 0, "no transfer half done: {b}");
            assert_eq!(b["loaded"], true, "{b}");
        }
    }
    sale.finish().await;
    println!("hot item: {:.1} s in all", started.elapsed().as_secs_f64());
}

/// Test B. The same sale; once a third of the stock is acknowledged, the
/// primary holding bucket 0 (the home of the shoppers who arrive first;
/// with one bucket, the event's) is `kill -9`ed. Its replica is promoted
/// (`cluster_state:ok` on every live node, every slot on a live primary)
/// and the sale goes on through the same engines. In the "lagging replica"
/// variants the replica is first SIGSTOPped and its link cut for 500 ms,
/// so it lacks every write of that window (on loopback, replication is
/// otherwise too quick to lose more than a few).
///
/// The promise checked is README's durability row "Redis back from an
/// older state (… failover to a lagging replica)" under the default
/// `SECKILL_ACK=ledger`: replication is asynchronous, so the promoted
/// replica may lack the last writes its primary acknowledged. For that row
/// README promises: stock never oversold (what the older state sells again
/// is persisted `failed` `stock_lost`, uncharged); every 202 is a row
/// (confirmed, or failed with a reason), because the engines did not die
/// and the writers persist their intents whether or not the ledger still
/// has them (`missing.lua`, then `admit.lua`); the reconciler repairs the
/// rest once the sale is still. So this test asserts: Postgres's confirmed
/// units ≤ stock; every 202's order_no is an order of its shopper, no
/// order_no answered twice; no order for a shopper beyond their unknown
/// (5xx / timed out) answers; each wallet charged exactly once per
/// confirmed order (debits, payments, balance) and never for a failed one;
/// per-user limit; failed orders only `stock_lost`, and no more of them
/// than 202s answered between the replica's last write and the cluster
/// being whole again (README: "at most the units sold after the
/// snapshot"); the reconciler's discrepancies only of the kinds a replayed
/// or lost intent and a repaired older state leave (`unacked_intent`,
/// `unpersisted_intent`, `stock_drift`, `oversold`, `buyer_drift`,
/// `redis_state_lost`, and for buckets `transfer_unfinished`,
/// `bucket_stock_drift`, `bucket_totals_drift`); and, once the reconciler
/// has converged, every check of the engine's checker PASS (so, with
/// buckets, `I1 buckets`: every bucket balanced and their totals making
/// `stock_total`). Exact sale is not asserted (the row promises "never
/// oversold"); units left unsold are printed. 503s and timeouts during the
/// failover window are expected and counted, not failures; the sale must
/// go on after it (202s for requests sent after the cluster is whole
/// again).
///
/// With six buckets (two of them, 0 and 1, on the killed primary; stock
/// moving between buckets while it dies), also: the buckets are on every
/// primary before and after (the promoted replica among them), every
/// bucket is loaded and no transfer is left in flight once the reconciler
/// has converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_mid_sale_with_six_buckets_fails_over_without_oversell_or_double_charge() {
    master_killed_mid_sale(BUCKETS, false).await;
}

/// Test B with one bucket (the whole event on the killed primary) and a
/// replica lagging by 500 ms of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_mid_sale_lagging_replica_one_bucket() {
    master_killed_mid_sale(1, true).await;
}

/// Test B with six buckets and a replica lagging by 500 ms of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the failover stress variant (a replica cut off for 500 ms before its primary is killed, six buckets): run by make faults; it failed 5 of 6 runs before the totals settlement; with its first part (5be9357) 4 of 5 passed, with its final form (85ab24b) 5 of 6, the sixth a cluster start-up timeout"]
async fn master_killed_mid_sale_lagging_replica_six_buckets() {
    master_killed_mid_sale(BUCKETS, true).await;
}

async fn master_killed_mid_sale(buckets: i64, lag: bool) {
    let started = Instant::now();
    let mut sale = Sale::open("cluster-failover", buckets).await;
    let view = sale.view().await.expect("event view");
    let masters = bucket_masters(&sale, &view);
    if sale.buckets > 1 {
        let on: BTreeSet<u16> = masters.iter().map(|m| m.2).collect();
        assert_eq!(on.len(), MASTERS, "buckets on every primary: {masters:?}");
    }
    let (_, slot, victim) = masters[0];
    let replicas = sale.cluster.created_replicas_of(victim);

    let crowd = sale.start_crowd(sale.crowd_order(), CONCURRENCY);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (crowd.accepted() as i64) < STOCK / 3 {
        assert!(Instant::now() < deadline, "a third of the stock never sold");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replica falls behind: stopped, its link cut (what was already
    // sent it still reads when it resumes), it takes nothing from its
    // primary for LAG; then the primary dies. The promoted replica lacks
    // every write of that window, whatever the loopback's replication
    // delay (otherwise too small to lose anything).
    // Without `lag`, the replica is as in sync as loopback makes it.
    let replica = replicas[0];
    let mut cut = 0;
    if lag {
        sale.cluster.sigstop(replica);
        cut = sale.cluster.cut_replication(victim);
    }
    // In sync, the replica may still miss what the primary answered in its
    // last moments: the window starts 100 ms before the kill.
    let lag_from = if lag {
        sale.clock.elapsed()
    } else {
        sale.clock
            .elapsed()
            .saturating_sub(Duration::from_millis(100))
    };
    if lag {
        tokio::time::sleep(LAG).await;
    }
    let primary_offset = sale.cluster.repl_offset(victim);
    sale.cluster.kill9(victim);
    let killed_at = sale.clock.elapsed();
    if lag {
        sale.cluster.sigcont(replica);
    }
    let failover = sale
        .cluster
        .wait_ok(Duration::from_secs(30))
        .await
        .expect("the replica is promoted");
    let whole_at = sale.clock.elapsed();
    let promoted = sale.cluster.master_of(slot);
    let replica_offset = sale.cluster.repl_offset(replica);
    println!(
        "replication cut ({cut} link): the primary's offset at the kill {primary_offset}, the promoted replica's {replica_offset}"
    );
    assert_eq!(cut, usize::from(lag), "the victim's replica link was cut");
    println!(
        "replica :{replica} {} at {:.2} s, primary :{victim} (slot {slot}) killed at {:.2} s with {} 202s, :{promoted} serves the slot {:.2} s later",
        if lag { "stopped, link cut," } else { "in sync" },
        lag_from.as_secs_f64(),
        killed_at.as_secs_f64(),
        crowd.accepted(),
        failover.as_secs_f64()
    );
    assert_eq!(
        promoted, replica,
        "slot {slot} moved to the victim's replica"
    );

    let mut attempts = crowd.join().await;
    println!(
        "crowd done in {:.1} s: {}",
        sale.clock.elapsed().as_secs_f64(),
        tally(&attempts)
    );
    let (first_sold_out, later) = after_first_sold_out(&attempts);
    println!(
        "first sold_out answered at {first_sold_out:?}; 202s for requests sent later: {later}"
    );
    let in_window = attempts
        .iter()
        .filter(|a| a.sent >= killed_at && a.sent <= whole_at)
        .collect::<Vec<_>>();
    println!(
        "during the failover window: {} requests, {} unknown (5xx/timeouts)",
        in_window.len(),
        in_window
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Unknown(_)))
            .count()
    );
    // 202s whose Redis writes the promoted replica may lack: answered
    // after it stopped taking the stream, up to the cluster being whole.
    let lagged = attempts
        .iter()
        .filter(|a| a.answered >= lag_from && a.answered <= whole_at)
        .filter(|a| matches!(a.outcome, Outcome::Accepted(_)))
        .count() as i64;
    println!("202s answered while the replica lagged or the slot was moving: {lagged}");
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.sent > whole_at).collect();
    let settled = sale.settle(Duration::from_secs(30)).await;
    println!(
        "settled {} after {} rounds, {:.1} s: stragglers {}",
        settled.settled,
        settled.rounds,
        settled.took.as_secs_f64(),
        tally(&settled.attempts)
    );
    let sold_after = after
        .iter()
        .copied()
        .chain(settled.attempts.iter())
        .filter(|a| matches!(a.outcome, Outcome::Accepted(_)))
        .count();
    attempts.extend(settled.attempts);
    assert!(
        sold_after > 0,
        "the sale went on after the failover: no 202 for a request sent after the cluster was whole"
    );

    // Reconciler passes until one repairs nothing (the sale is still).
    let mut passes = 0;
    loop {
        passes += 1;
        match sale.reconcile().await {
            Ok(r) if r["discrepancies"].as_array().is_some_and(|d| d.is_empty()) => break,
            Ok(r) => println!("reconcile pass {passes}: {}", r["discrepancies"]),
            Err(e) => println!("reconcile pass {passes}: {e}"),
        }
        assert!(passes < 10, "the reconciler does not converge");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let kinds = discrepancy_kinds(&sale.db, sale.event).await;
    println!("reconciler discrepancies of the sale: {kinds:?}");
    const FORESEEN: &[&str] = &[
        "unacked_intent",
        "unpersisted_intent",
        "stock_drift",
        "oversold",
        "buyer_drift",
        "redis_state_lost",
        // Stock buckets (README "Hot item across shards"): a transfer whose
        // second step the reconciler made (its engine's call failed while a
        // primary was down); a bucket's stock set to its total less what
        // its shoppers hold; the buckets' totals against stock_total (a
        // transfer step lost with the failover).
        "transfer_unfinished",
        "bucket_stock_drift",
        "bucket_totals_drift",
        "bucket_balance_drift",
    ];
    let unforeseen: Vec<&String> = kinds
        .keys()
        .filter(|k| !FORESEEN.contains(&k.as_str()))
        .collect();
    assert!(
        unforeseen.is_empty(),
        "discrepancies README's failover row does not foresee: {unforeseen:?}"
    );
    let checker = sale.invariants().await.expect("invariants");
    let failing = failing_checks(&checker);

    let truth = Truth::read(&sale.db, sale.event, &attempts).await;
    let failed = truth.failed_by_reason();
    println!(
        "postgres: {} orders, {} confirmed units, failed {:?}; {} 202s, {} unknown answers",
        truth.orders.len(),
        truth.confirmed_units,
        failed,
        truth.accepted,
        truth.unknown
    );
    truth.assert_common();
    assert!(
        truth.confirmed_units <= STOCK,
        "oversold: {} confirmed units of {STOCK}",
        truth.confirmed_units
    );
    assert!(
        failed.keys().all(|r| r == "stock_lost"),
        "every shopper could pay: failed orders only stock_lost: {failed:?}"
    );
    if sale.buckets > 1 {
        let view = sale.view().await.expect("event view");
        println!("after the failover:");
        let on: BTreeSet<u16> = bucket_masters(&sale, &view).iter().map(|m| m.2).collect();
        assert_eq!(
            on.into_iter().collect::<Vec<_>>(),
            sale.cluster.master_ports(),
            "buckets on every primary, the promoted replica among them"
        );
        for b in buckets_of(&view) {
            assert_eq!(b["loaded"], true, "every bucket loaded again: {b}");
            assert_eq!(b["in_flight"], 0, "every transfer finished: {b}");
        }
    }
    assert!(
        failing.is_empty() && checker["drained"] == true,
        "after the reconciler converged, checks failing: {failing:?}"
    );
    // README: what the older state sells again is "at most the units sold
    // after the snapshot": here, the 202s answered from the moment the
    // replica stopped taking the stream until the cluster was whole.
    let stock_lost = failed.get("stock_lost").copied().unwrap_or(0) as i64;
    assert!(
        stock_lost <= lagged,
        "{stock_lost} orders stock_lost > {lagged} units acknowledged in the lag window"
    );
    if truth.confirmed_units < STOCK {
        println!(
            "NOTE: {} units unsold (README's failover row promises never oversold, not exact)",
            STOCK - truth.confirmed_units
        );
    }
    sale.finish().await;
    println!(
        "master_killed_mid_sale ({buckets} bucket(s)): {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
