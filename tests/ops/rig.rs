//! Real `seckill serve` processes for the operator-facing tests: each test
//! gets its own Postgres database and Redis key prefix, and engines whose
//! `/metrics` and logs are theirs alone (in-process apps share one
//! recorder). `Drop` kills the processes; `finish` also drops the database.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "ops-suite-admin-token-0123456789";
pub const JWT_SECRET: &str = "ops-suite-jwt-secret-0123456789abcdef012";

pub use crate::ports::free_port;

fn admin_db_url() -> String {
    std::env::var("SECKILL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{name}")
}

pub struct Engine {
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the engine has logged so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Rig {
    pub dir: PathBuf,
    pub prefix: String,
    pub db_url: String,
    db_name: String,
    pub engines: Vec<Engine>,
    pub http: reqwest::Client,
    pub auth: seckill::auth::Auth,
}

impl Rig {
    pub async fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "seckill-ops-{name}-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("test dir");
        let db_name = format!("seckill_ops_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_db_url())
            .await
            .expect("postgres reachable (make services)");
        sqlx::query(&format!(r#"CREATE DATABASE "{db_name}""#))
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        let db_url = with_database(&admin_db_url(), &db_name);
        let out = Command::new(env!("CARGO_BIN_EXE_seckill"))
            .arg("migrate")
            .env("SECKILL_DATABASE_URL", &db_url)
            .output()
            .expect("run seckill migrate");
        assert!(out.status.success(), "migrate: {out:?}");
        Self {
            dir,
            prefix: format!("o{}", &Uuid::new_v4().simple().to_string()[..10]),
            db_url,
            db_name,
            engines: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            auth: seckill::auth::Auth::new(JWT_SECRET.as_bytes(), ADMIN_TOKEN),
        }
    }

    /// Starts an engine and waits until `/readyz` answers 200.
    pub async fn start_engine(&mut self, overrides: &[(&str, &str)]) -> usize {
        let port = free_port();
        let mut env: BTreeMap<String, String> = [
            ("SECKILL_BIND", format!("127.0.0.1:{port}")),
            ("SECKILL_DATABASE_URL", self.db_url.clone()),
            ("SECKILL_REDIS_URL", redis_url()),
            ("SECKILL_REDIS_PREFIX", self.prefix.clone()),
            ("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("SECKILL_JWT_SECRET", JWT_SECRET.into()),
            ("SECKILL_RATE_GLOBAL_RPS", "0".into()),
            ("SECKILL_RATE_USER_RPS", "0".into()),
            ("SECKILL_RATE_IP_RPS", "0".into()),
            ("SECKILL_LOG_FORMAT", "json".into()),
            ("SECKILL_DATABASE_POOL", "6".into()),
            ("SECKILL_WRITERS", "2".into()),
            ("SECKILL_SHUTDOWN_READY_DELAY_MS", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        let log = self
            .dir
            .join(format!("engine{}.log", self.engines.len() + 1));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("engine log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
        cmd.arg("serve").current_dir(&self.dir);
        for (name, _) in std::env::vars() {
            if name.starts_with("SECKILL_") || name == "DATABASE_URL" || name == "REDIS_URL" {
                cmd.env_remove(name);
            }
        }
        cmd.env("RUST_LOG", "info")
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let mut engine = Engine {
            port,
            log,
            child: Some(cmd.spawn().expect("start seckill serve")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .http
                .get(format!("{}/readyz", engine.url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                break;
            }
            if let Some(Ok(Some(status))) = engine.child.as_mut().map(|c| c.try_wait()) {
                panic!("engine exited at start ({status}):\n{}", engine.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "engine not ready:\n{}",
                engine.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.engines.push(engine);
        self.engines.len() - 1
    }

    pub fn url(&self, engine: usize, path: &str) -> String {
        format!("{}{path}", self.engines[engine].url())
    }

    pub fn token(&self, user: i64) -> String {
        self.auth.issue(user, 3600)
    }

    pub async fn admin(&self, engine: usize, method: Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method, self.url(engine, path))
            .bearer_auth(ADMIN_TOKEN);
        if !body.is_null() {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// A sale open now, preheated, with `users` funded wallets (ids 1..).
    pub async fn open_sale(&self, stock: i64, users: i64) -> i64 {
        let now = chrono::Utc::now();
        let event = self
            .admin(
                0,
                Method::POST,
                "/admin/events",
                json!({
                    "name": "ops sale", "price": 100, "stock": stock, "per_user_limit": 2,
                    "starts_at": (now - chrono::Duration::seconds(5)).to_rfc3339(),
                    "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                }),
            )
            .await;
        let id = event["id"].as_i64().unwrap();
        self.admin(
            0,
            Method::POST,
            "/admin/wallets/seed",
            json!({"first_user_id": 1, "count": users, "balance": 10_000}),
        )
        .await;
        self.admin(
            0,
            Method::POST,
            &format!("/admin/events/{id}/preheat"),
            Value::Null,
        )
        .await;
        id
    }

    pub async fn buy(&self, engine: usize, event: i64, user: i64, quantity: i64) -> StatusCode {
        self.http
            .post(self.url(engine, &format!("/api/events/{event}/purchase")))
            .bearer_auth(self.token(user))
            .json(&json!({ "quantity": quantity }))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn metrics(&self, engine: usize) -> Metrics {
        let text = self
            .http
            .get(self.url(engine, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Metrics::parse(&text)
    }

    /// Stops the engines and drops the database.
    pub async fn finish(mut self) {
        for engine in &mut self.engines {
            engine.kill9();
        }
        if let Ok(mut admin) = PgConnection::connect(&admin_db_url()).await {
            let _ = sqlx::query(&format!(
                r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                self.db_name
            ))
            .execute(&mut admin)
            .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `/metrics` scrape: its samples (name, labels, value).
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label pair");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Self { samples }
    }

    /// The value of the one series with these labels (among others), or 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}
