//! Test harness: each test gets the real engine on port 0, its own Postgres
//! database and its own Redis key prefix, so tests run in parallel.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use reqwest::{Response, StatusCode};
use seckill::{auth::Auth, config::Settings, redis::Redis, startup::Application};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

pub fn admin_db_url() -> String {
    std::env::var("SECKILL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub base: String,
    pub db: PgPool,
    /// The engine's Redis wrappers, for reading the sale state.
    pub redis: Redis,
    /// A plain client: the test's own hands on Redis, to inject faults.
    pub raw: fred::clients::Client,
    pub prefix: String,
    pub auth: Arc<Auth>,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    shopper: Buyer,
    db_name: String,
}

/// The app buys like any shopper: `app.purchase(...)` is `Buyer::purchase`.
impl std::ops::Deref for TestApp {
    type Target = Buyer;

    fn deref(&self) -> &Buyer {
        &self.shopper
    }
}

/// Overrides on top of the test defaults (rate limits off).
pub type Env = &'static [(&'static str, &'static str)];

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: Env) -> TestApp {
    spawn_app_env(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .await
}

/// Like `spawn_app_with`, for values known only at run time (a cluster's ports).
pub async fn spawn_app_env(overrides: Vec<(String, String)>) -> TestApp {
    let db_name = format!("seckill_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_db_url())
        .await
        .expect("postgres reachable (make services)");
    admin
        .execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
        .await
        .expect("create test database");
    let db_url = with_database(&admin_db_url(), &db_name);
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);

    let mut env: HashMap<String, String> = [
        ("SECKILL_BIND", "127.0.0.1:0"),
        ("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SECKILL_JWT_SECRET", JWT_SECRET),
        ("SECKILL_RATE_GLOBAL_RPS", "0"),
        ("SECKILL_RATE_USER_RPS", "0"),
        ("SECKILL_RATE_IP_RPS", "0"),
        ("SECKILL_RECONCILE_INTERVAL_MS", "60000"),
        ("SECKILL_DATABASE_POOL", "8"),
        ("SECKILL_SHUTDOWN_READY_DELAY_MS", "0"),
        // No outbox relay unless a test asks for one (tests/api/outbox.rs).
        ("SECKILL_NATS_URL", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("SECKILL_DATABASE_URL".into(), db_url.clone());
    env.insert("SECKILL_REDIS_URL".into(), redis_url());
    env.insert("SECKILL_REDIS_PREFIX".into(), prefix.clone());
    for (k, v) in overrides {
        env.insert(k, v);
    }
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");

    let db = seckill::db::connect(&db_url, 4, Duration::from_secs(5))
        .await
        .expect("connect test db");
    seckill::db::MIGRATOR
        .run(&db)
        .await
        .expect("migrate test db");
    let redis = Redis::connect(
        &env["SECKILL_REDIS_URL"],
        &prefix,
        2,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .expect("redis reachable");

    let raw = Builder::from_config(Config::from_url(&env["SECKILL_REDIS_URL"]).unwrap())
        .build()
        .unwrap();
    raw.init().await.expect("redis reachable");

    let app = Application::build(settings).await.expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let auth = Arc::new(Auth::new(JWT_SECRET.as_bytes(), ADMIN_TOKEN));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        shopper: Buyer {
            http: http.clone(),
            base: base.clone(),
            auth: auth.clone(),
        },
        base,
        db,
        redis,
        raw,
        prefix,
        auth,
        http,
        shutdown,
        server: Some(server),
        db_name,
    }
}

/// A second engine process on the same Postgres database and Redis prefix
/// as `app` (its own writers, reconciler, catalog and sold-out flags).
pub struct PeerEngine {
    pub base: String,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn_peer(&self) -> PeerEngine {
        let env: HashMap<String, String> = [
            ("SECKILL_BIND", "127.0.0.1:0".to_string()),
            ("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("SECKILL_JWT_SECRET", JWT_SECRET.into()),
            ("SECKILL_RATE_GLOBAL_RPS", "0".into()),
            ("SECKILL_RATE_USER_RPS", "0".into()),
            ("SECKILL_RATE_IP_RPS", "0".into()),
            ("SECKILL_RECONCILE_INTERVAL_MS", "60000".into()),
            ("SECKILL_DATABASE_POOL", "8".into()),
            ("SECKILL_SHUTDOWN_READY_DELAY_MS", "0".into()),
            (
                "SECKILL_DATABASE_URL",
                with_database(&admin_db_url(), &self.db_name),
            ),
            ("SECKILL_REDIS_URL", redis_url()),
            ("SECKILL_REDIS_PREFIX", self.prefix.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("peer settings");
        let app = Application::build(settings).await.expect("build peer");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        PeerEngine {
            base,
            shutdown,
            server: Some(server),
        }
    }
}

impl PeerEngine {
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.server.take() {
            let _ = handle.await;
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{db}")
}

pub struct Sale {
    pub id: i64,
    pub price: i64,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, user: i64) -> String {
        self.auth.issue(user, 3600)
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// Creates an event; the window is relative to now.
    pub async fn create_event(
        &self,
        stock: i64,
        price: i64,
        limit: i64,
        starts_in: chrono::Duration,
        lasts: chrono::Duration,
    ) -> Sale {
        let starts_at: DateTime<Utc> = Utc::now() + starts_in;
        let r = self
            .admin_post(
                "/admin/events",
                json!({"name": "test sale", "price": price, "stock": stock, "per_user_limit": limit, "starts_at": starts_at, "ends_at": starts_at + lasts}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        Sale {
            id: body["id"].as_i64().unwrap(),
            price,
        }
    }

    /// An event open now, preheated.
    pub async fn open_sale(&self, stock: i64, price: i64, limit: i64) -> Sale {
        let sale = self
            .create_event(
                stock,
                price,
                limit,
                chrono::Duration::seconds(-1),
                chrono::Duration::hours(1),
            )
            .await;
        self.preheat(sale.id).await;
        sale
    }

    pub async fn preheat(&self, id: i64) -> Value {
        let r = self
            .http
            .post(self.url(&format!("/admin/events/{id}/preheat")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "preheat");
        r.json().await.unwrap()
    }

    pub async fn fund(&self, first: i64, count: i64, balance: i64) {
        let r = self
            .admin_post(
                "/admin/wallets/seed",
                json!({"first_user_id": first, "count": count, "balance": balance}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "seed wallets");
    }

    /// A cheap, cloneable client for concurrent shoppers (the app itself
    /// buys through one: `app.purchase(...)`).
    pub fn buyer(&self) -> Buyer {
        self.shopper.clone()
    }

    /// Waits until no intent of the event is pending (writers done).
    pub async fn drain(&self, event: i64) -> Value {
        for _ in 0..300 {
            let view = self.admin_get(&format!("/admin/events/{event}")).await;
            if view["pending"] == 0 {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("event {event} did not drain");
    }

    /// SPEC §5 checker; panics with every check when one fails.
    pub async fn assert_invariants(&self, event: i64) -> Value {
        let report = self
            .admin_get(&format!("/admin/events/{event}/invariants"))
            .await;
        assert_eq!(report["ok"], true, "invariants failed: {report:#}");
        report
    }

    pub async fn stock_left(&self, event: i64) -> Option<i64> {
        let (of,): (i32,) = sqlx::query_as("SELECT stock_buckets FROM events WHERE id = $1")
            .bind(event)
            .fetch_optional(&self.db)
            .await
            .unwrap()
            .unwrap_or((1,));
        self.redis
            .event_stock_left(seckill::redis::Buckets::new(event, of as u16))
            .await
            .unwrap()
    }

    pub async fn scalar(&self, sql: &str, event: i64) -> i64 {
        let (v,): (i64,) = sqlx::query_as(sql)
            .bind(event)
            .fetch_one(&self.db)
            .await
            .unwrap();
        v
    }

    /// This test's Redis keys (under its prefix).
    pub async fn redis_keys(&self) -> Vec<String> {
        self.raw
            .custom(fred::cmd!("KEYS"), vec![format!("{}:*", self.prefix)])
            .await
            .unwrap()
    }

    /// Number of Redis keys under this test's prefix.
    pub async fn redis_key_count(&self) -> usize {
        self.redis_keys().await.len()
    }

    /// Every Redis key of this deployment gone, as after a Redis restart
    /// without persistence (the keys of other tests are left alone).
    pub async fn lose_redis_state(&self) {
        // One key at a time: in cluster mode the keys live on several slots.
        for key in self.redis_keys().await {
            let _: i64 = self.raw.del(key).await.unwrap();
        }
    }

    /// `POST /admin/reconcile`: one reconciler pass now, its report.
    pub async fn reconcile(&self) -> Value {
        let r = self
            .http
            .post(self.url("/admin/reconcile"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "reconcile");
        r.json().await.unwrap()
    }

    /// `GET path` with this bearer token (none: no Authorization header).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// A shopper's `GET /api/orders/{order_no}`.
    pub async fn order(&self, user: i64, order_no: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/api/orders/{order_no}")))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Graceful stop; returns what `run_until_stopped` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Stops the app and drops its database and keys (call at the end of a passing test).
    pub async fn cleanup(mut self) {
        let _ = self.stop().await;
        let keys: Vec<String> = self
            .raw
            .custom(fred::cmd!("KEYS"), vec![format!("{}:*", self.prefix)])
            .await
            .unwrap_or_default();
        for key in keys {
            let _: Result<i64, _> = self.raw.del(key).await;
        }
        let _ = self.raw.quit().await;
        self.db.close().await;
        if let Ok(mut admin) = PgConnection::connect(&admin_db_url()).await {
            let _ = admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name).as_str(),
                )
                .await;
        }
    }
}

/// Fires `f` for every item concurrently and collects the results.
pub async fn all<T, F, Fut>(items: impl IntoIterator<Item = T>, f: F) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let handles: Vec<_> = items.into_iter().map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Shopper-side client, cloneable into spawned tasks.
#[derive(Clone)]
pub struct Buyer {
    http: reqwest::Client,
    base: String,
    auth: Arc<Auth>,
}

impl Buyer {
    pub async fn purchase(&self, event: i64, user: i64, quantity: Value) -> (StatusCode, Value) {
        self.purchase_with(event, user, json!({"quantity": quantity}), None)
            .await
    }

    pub async fn purchase_with(
        &self,
        event: i64,
        user: i64,
        body: Value,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/events/{event}/purchase", self.base))
            .bearer_auth(self.auth.issue(user, 3600))
            .json(&body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A `redis-server` of the test's own on a spare loopback port (no
/// persistence), for tests that count or break what Redis sees; killed on drop.
pub struct LocalRedis {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl LocalRedis {
    pub async fn start() -> Self {
        let port = crate::ports::free_port();
        let dir = std::env::temp_dir().join(format!("seckill-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = Self { port, child, dir };
        for _ in 0..100 {
            if redis.cli(&["PING"]).trim() == "PONG" {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {port} did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls of one command so far (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A second engine process on a test's database and Redis prefix (its own
/// catalog, writers and reconciler), as behind a load balancer.
pub struct SecondEngine {
    pub buyer: Buyer,
    pub base: String,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn second_engine(&self) -> SecondEngine {
        let db_url = with_database(&admin_db_url(), &self.db_name);
        let env: HashMap<String, String> = [
            ("SECKILL_BIND", "127.0.0.1:0"),
            ("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN),
            ("SECKILL_JWT_SECRET", JWT_SECRET),
            ("SECKILL_RATE_GLOBAL_RPS", "0"),
            ("SECKILL_RATE_USER_RPS", "0"),
            ("SECKILL_RATE_IP_RPS", "0"),
            ("SECKILL_RECONCILE_INTERVAL_MS", "60000"),
            ("SECKILL_DATABASE_POOL", "4"),
            ("SECKILL_SHUTDOWN_READY_DELAY_MS", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([
            ("SECKILL_DATABASE_URL".to_string(), db_url),
            ("SECKILL_REDIS_URL".to_string(), redis_url()),
            ("SECKILL_REDIS_PREFIX".to_string(), self.prefix.clone()),
        ])
        .collect();
        let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("settings");
        let app = Application::build(settings)
            .await
            .expect("build second engine");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run_until_stopped());
        SecondEngine {
            buyer: Buyer {
                http: self.http.clone(),
                base: base.clone(),
                auth: self.auth.clone(),
            },
            base,
            shutdown,
            server,
        }
    }
}

impl SecondEngine {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}
