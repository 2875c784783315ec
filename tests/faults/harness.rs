//! Real processes for the fault scenarios: a `redis-server` on a spare
//! loopback port, a Postgres database of its own, and `seckill serve`
//! processes, all owned by a [`Rig`] whose `Drop` kills them (also when a
//! scenario panics) and prints their log tails when the scenario did not pass.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use fred::prelude::*;
use nix::{sys::signal, unistd::Pid};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "fault-suite-admin-token-0123456789";
pub const JWT_SECRET: &str = "fault-suite-jwt-secret-0123456789abcdef";

pub use crate::ports::free_port;

/// The last `lines` lines of a log file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("({} missing)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn signal_child(child: &Child, sig: signal::Signal) {
    signal::kill(Pid::from_raw(child.id() as i32), sig).expect("signal a child process");
}

/// Waits for a child to exit, polling so the runtime keeps going.
async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill_and_reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How the scenario's Redis persists its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `--appendonly no`: a restart comes back empty.
    None,
    /// `--appendonly yes --appendfsync always`.
    AofAlways,
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

impl RedisServer {
    async fn start(dir: PathBuf, persistence: Persistence) -> Self {
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self {
            port: free_port(),
            dir,
            persistence,
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    async fn spawn(&mut self) {
        let (aof, fsync) = match self.persistence {
            Persistence::None => ("no", "everysec"),
            Persistence::AofAlways => ("yes", "always"),
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", aof, "--appendfsync", fsync])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until PING answers PONG (not LOADING).
    async fn wait_ready(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
                s.write_all(b"PING\r\n").await?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await?;
                Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
            };
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("redis-server exited ({status}):\n{}", tail(&self.log(), 30));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready:\n{}",
                self.port,
                tail(&self.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Starts it again on the same port and directory (AOF, if any, reloads).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// `SAVE`: a snapshot on disk, which the next start loads (as after a
    /// power loss under `everysec`, or a failover to a lagging replica, the
    /// server comes back with this older state).
    pub async fn snapshot(&self) {
        let client = self.client().await;
        let _: () = client
            .custom(fred::cmd!("SAVE"), Vec::<String>::new())
            .await
            .expect("SAVE");
        let _ = client.quit().await;
    }

    pub fn sigstop(&self) {
        signal_child(self.child.as_ref().expect("redis running"), signal::SIGSTOP);
    }

    pub fn sigcont(&self) {
        signal_child(self.child.as_ref().expect("redis running"), signal::SIGCONT);
    }

    /// A short-lived client for direct reads (the test's view of Redis).
    pub async fn client(&self) -> Client {
        let config = Config::from_url(&self.url()).expect("redis url");
        let client = Builder::from_config(config)
            .build()
            .expect("build redis client");
        client.init().await.expect("connect to redis");
        client
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Never leave a SIGSTOPped server behind, whatever happens next.
            let _ = signal::kill(Pid::from_raw(child.id() as i32), signal::SIGCONT);
        }
        kill_and_reap(&mut self.child);
    }
}

/// One scenario's Postgres database, created fresh and migrated by `seckill migrate`.
pub struct Database {
    pub name: String,
    pub url: String,
    admin_url: String,
    pub pool: PgPool,
}

impl Database {
    async fn create(dir: &Path) -> Self {
        let admin_url = std::env::var("SECKILL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("seckill_fault_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to Postgres (SECKILL_TEST_DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);

        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
            .arg("migrate")
            .current_dir(dir)
            .env("SECKILL_DATABASE_URL", &url)
            .output()
            .await
            .expect("run seckill migrate");
        assert!(
            out.status.success(),
            "seckill migrate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let options: PgConnectOptions = url.parse().expect("database url");
        let options = options
            .application_name("seckill-faults")
            .disable_statement_logging();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect to the scenario database");
        Self {
            name,
            url,
            admin_url,
            pool,
        }
    }

    /// Reconciler passes recorded so far.
    pub async fn reconcile_runs(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM reconcile_runs")
            .fetch_one(&self.pool)
            .await
            .expect("count reconcile runs");
        n
    }

    /// The pid of the engine that ran the last reconciler pass, if any.
    pub async fn last_reconciler_pid(&self) -> Option<String> {
        let holder: Option<(String,)> =
            sqlx::query_as("SELECT holder FROM reconcile_runs ORDER BY id DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .expect("last run");
        holder.map(|(h,)| h.split('-').next().unwrap_or("").to_string())
    }

    /// Reconciler passes by the engine with this pid since `since`.
    pub async fn passes_by(&self, pid: &str, since: chrono::DateTime<chrono::Utc>) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM reconcile_runs WHERE started_at > $1 AND split_part(holder, '-', 1) = $2",
        )
        .bind(since)
        .bind(pid)
        .fetch_one(&self.pool)
        .await
        .expect("runs");
        n
    }

    /// Postgres's clock.
    pub async fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let (now,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .expect("now");
        now
    }

    /// Shoppers with two confirmed orders in the event, and its `stock_lost` orders.
    pub async fn charged_twice_and_stock_lost(&self, event_id: i64) -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT user_id FROM orders WHERE event_id = $1 AND status = 'confirmed'
                                           GROUP BY user_id HAVING count(*) > 1) t),
                    (SELECT count(*) FROM orders WHERE event_id = $1 AND failure_reason = 'stock_lost')",
        )
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
        .expect("double orders and stock_lost")
    }

    /// How many of these order_nos are orders.
    pub async fn orders_among(&self, order_nos: &[Uuid]) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE order_no = ANY($1)")
            .bind(order_nos)
            .fetch_one(&self.pool)
            .await
            .expect("count orders");
        n
    }

    /// Terminates every backend the engines hold; returns how many.
    pub async fn terminate_engine_backends(&self) -> i64 {
        let rows: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'seckill' AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&self.pool)
        .await
        .expect("pg_terminate_backend");
        rows.iter().filter(|(ok,)| *ok).count() as i64
    }

    async fn drop_database(&self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}

/// The admin URL with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// One `seckill serve` process; restartable with the same environment.
pub struct Engine {
    pub name: String,
    pub port: u16,
    env: Vec<(String, String)>,
    dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("engine log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
        cmd.arg("serve").current_dir(&self.dir);
        for (name, _) in std::env::vars() {
            if name.starts_with("SECKILL_")
                || name == "DATABASE_URL"
                || name == "REDIS_URL"
                || name == "RUST_LOG"
            {
                cmd.env_remove(name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start seckill serve"));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("{}/readyz", self.url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .map(|r| r.status() == StatusCode::OK)
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "engine {} exited at start ({status}):\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "engine {} not ready within 30 s:\n{}",
                self.name,
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill9(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Starts it again with the same environment and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn sigterm(&self) {
        signal_child(
            self.child.as_ref().expect("engine running"),
            signal::SIGTERM,
        );
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = wait_exit(self.child.as_mut()?, within).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Everything one scenario runs against.
pub struct Rig {
    pub scenario: &'static str,
    pub dir: PathBuf,
    pub prefix: String,
    pub db: Database,
    pub redis: RedisServer,
    pub engines: Vec<Engine>,
    finished: bool,
}

impl Rig {
    pub async fn new(scenario: &'static str, persistence: Persistence) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "seckill-fault-{scenario}-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("scenario temp dir");
        println!("\n=== {scenario} (logs in {}) ===", dir.display());
        let redis = RedisServer::start(dir.join("redis"), persistence).await;
        let db = Database::create(&dir).await;
        Self {
            scenario,
            prefix: format!("f{}", &Uuid::new_v4().simple().to_string()[..8]),
            dir,
            db,
            redis,
            engines: Vec::new(),
            finished: false,
        }
    }

    /// Starts one more engine; `overrides` replace or add `SECKILL_*` settings.
    pub async fn start_engine(&mut self, overrides: &[(&str, &str)]) -> usize {
        let index = self.engines.len();
        let port = free_port();
        let mut env: Vec<(String, String)> = [
            ("SECKILL_BIND", format!("127.0.0.1:{port}")),
            ("SECKILL_DATABASE_URL", self.db.url.clone()),
            ("SECKILL_REDIS_URL", self.redis.url()),
            ("SECKILL_REDIS_PREFIX", self.prefix.clone()),
            ("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("SECKILL_JWT_SECRET", JWT_SECRET.into()),
            ("SECKILL_RATE_GLOBAL_RPS", "0".into()),
            ("SECKILL_RATE_USER_RPS", "0".into()),
            ("SECKILL_RATE_IP_RPS", "0".into()),
            ("SECKILL_RECONCILE_INTERVAL_MS", "1000".into()),
            ("SECKILL_RECONCILE_GRACE_MS", "500".into()),
            ("SECKILL_REDIS_TIMEOUT_MS", "500".into()),
            ("SECKILL_LOG_FORMAT", "json".into()),
            // No outbox relay unless the scenario starts its own NATS.
            ("SECKILL_NATS_URL", "off".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in overrides {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let name = format!("engine{}", index + 1);
        let mut engine = Engine {
            log: self.dir.join(format!("{name}.log")),
            name,
            port,
            env,
            dir: self.dir.clone(),
            child: None,
        };
        engine.spawn().await;
        self.engines.push(engine);
        index
    }

    /// The key names of this rig's deployment (the engine's own builder).
    pub fn keys(&self) -> seckill::redis::Keys {
        seckill::redis::Keys::new(self.prefix.clone())
    }

    pub fn api(&self, engine: usize) -> Api {
        Api::new(self.engines[engine].url())
    }

    /// Marks the scenario passed: stops the processes, drops the database,
    /// removes the temp dir (kept when `SECKILL_FAULTS_KEEP_LOGS` is set).
    pub async fn finish(mut self) {
        self.finished = true;
        for e in &mut self.engines {
            e.kill9();
        }
        self.redis.kill9();
        self.db.drop_database().await;
        if std::env::var_os("SECKILL_FAULTS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for e in &mut self.engines {
            e.kill9();
        }
        eprintln!(
            "\n--- {}: FAILED; database {} and logs in {} kept ---",
            self.scenario,
            self.db.name,
            self.dir.display()
        );
        for e in &self.engines {
            eprintln!("--- {} log tail ---\n{}", e.name, tail(&e.log, 40));
        }
        eprintln!("--- redis log tail ---\n{}", tail(&self.redis.log(), 15));
    }
}

/// The operator API of one engine.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
}

/// A sale as the scenario set it up.
#[derive(Clone, Copy, Debug)]
pub struct Sale {
    pub event_id: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    pub first_user: i64,
    pub users: i64,
    pub balance: i64,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
        }
    }

    /// Sends an admin request; (status, body or null).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> Value {
        let (status, body) = self
            .call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(status, want, "{path}: {body}");
        body
    }

    /// Creates a running sale, funds `users` wallets from `first_user`, preheats it.
    pub async fn open_sale(&self, stock: i64, users: i64) -> Sale {
        let price = 100;
        let per_user_limit = 2;
        let balance = price * per_user_limit * 5;
        let now = chrono::Utc::now();
        let event = self
            .expect(
                reqwest::Method::POST,
                "/admin/events",
                Some(json!({
                    "name": "fault sale",
                    "price": price,
                    "stock": stock,
                    "per_user_limit": per_user_limit,
                    "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                    "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
                })),
                StatusCode::CREATED,
            )
            .await;
        let event_id = event["id"].as_i64().expect("event id");
        let first_user = 1;
        self.expect(
            reqwest::Method::POST,
            "/admin/wallets/seed",
            Some(json!({"first_user_id": first_user, "count": users, "balance": balance})),
            StatusCode::OK,
        )
        .await;
        self.expect(
            reqwest::Method::POST,
            &format!("/admin/events/{event_id}/preheat"),
            None,
            StatusCode::OK,
        )
        .await;
        Sale {
            event_id,
            stock,
            per_user_limit,
            first_user,
            users,
            balance,
        }
    }

    pub async fn event(&self, id: i64) -> Result<Value, String> {
        match self
            .call(reqwest::Method::GET, &format!("/admin/events/{id}"), None)
            .await
        {
            Ok((StatusCode::OK, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn invariants(&self, id: i64) -> Result<Value, String> {
        match self
            .call(
                reqwest::Method::GET,
                &format!("/admin/events/{id}/invariants"),
                None,
            )
            .await
        {
            Ok((StatusCode::OK, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `POST /admin/reconcile`; Err on anything but 200.
    pub async fn reconcile(&self) -> Result<Value, String> {
        match self
            .call(reqwest::Method::POST, "/admin/reconcile", None)
            .await
        {
            Ok((StatusCode::OK, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One counter from `/metrics` (summed over labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(resp) = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
