//! The engine's HTTP API as this client uses it (SPEC §3): operator calls with
//! the admin token, shopper calls with HS256 tokens signed here
//! ([`signer`]), and the classification of every purchase answer into an
//! [`Outcome`] ([`outcome`]).

mod outcome;
mod signer;
mod wire;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use reqwest::{header::HeaderValue, Client, StatusCode, Url};
use serde::{de::DeserializeOwned, Deserialize};
use uuid::Uuid;

use self::outcome::{classify, transport};
pub use self::{
    outcome::{error_code, Outcome, PurchaseResult},
    signer::Signer,
    wire::{AdminEvent, Invariants, NewEvent, Order},
};

/// HTTP client of one engine.
pub struct Api {
    http: Client,
    base: String,
    admin: HeaderValue,
    timeout: Duration,
}

impl Api {
    /// A client keeping up to `pool` idle connections; `timeout` bounds each
    /// shopper request (operator calls get longer).
    pub fn new(
        base_url: &str,
        admin_token: &str,
        pool: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let admin = HeaderValue::from_str(&format!("Bearer {admin_token}"))
            .context("SECKILL_ADMIN_TOKEN is not a valid header value")?;
        Ok(Self {
            http,
            base: base_url.to_owned(),
            admin,
            timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn admin_call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        expect: &[StatusCode],
    ) -> anyhow::Result<T> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, self.admin.clone())
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .with_context(|| format!("{what}: request failed"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the body"))?;
        if !expect.contains(&status) {
            bail!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{what}: unexpected body: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            )
        })
    }

    /// `GET /readyz` answers 200.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("the engine at {} does not answer", self.base))?;
        if resp.status() != StatusCode::OK {
            bail!(
                "the engine at {} is not ready: HTTP {}",
                self.base,
                resp.status()
            );
        }
        Ok(())
    }

    /// `GET /metrics`: the engine's Prometheus text.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .context("GET /metrics")?;
        ensure!(
            resp.status() == StatusCode::OK,
            "GET /metrics: HTTP {}",
            resp.status()
        );
        resp.text().await.context("GET /metrics: reading the body")
    }

    /// A GET whose answer does not matter (connection warm-up).
    pub async fn get_ok(&self, url: &str) {
        let _ = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status());
    }

    /// Creates the event and loads it into Redis, ready to sell.
    pub async fn create_preheated_event(&self, event: &NewEvent<'_>) -> anyhow::Result<AdminEvent> {
        let req = self.http.post(self.url("/admin/events")).json(event);
        let event: AdminEvent = self
            .admin_call(
                req,
                "POST /admin/events",
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await?;
        ensure!(event.id > 0, "POST /admin/events answered without an id");
        self.preheat(event.id).await?;
        Ok(event)
    }

    /// Seeds `count` wallets from `first`, `chunk` per call so that one call
    /// stays well inside its timeout; returns how many were new.
    pub async fn seed_wallets(
        &self,
        first: i64,
        count: u64,
        balance: i64,
        chunk: u64,
    ) -> anyhow::Result<u64> {
        let mut created = 0;
        let mut done = 0;
        while done < count {
            let n = chunk.min(count - done);
            created += self.seed_chunk(first + done as i64, n, balance).await?;
            done += n;
        }
        Ok(created)
    }

    /// Bulk-creates wallets; returns how many the engine says it created.
    async fn seed_chunk(&self, first: i64, count: u64, balance: i64) -> anyhow::Result<u64> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(default)]
            created: u64,
        }
        let req = self.http.post(self.url("/admin/wallets/seed")).json(
            &serde_json::json!({ "first_user_id": first, "count": count, "balance": balance }),
        );
        let created: Created = self
            .admin_call(
                req,
                "POST /admin/wallets/seed",
                &[StatusCode::OK, StatusCode::CREATED],
            )
            .await?;
        Ok(created.created)
    }

    /// `GET /admin/wallets/{user_id}` → balance.
    pub async fn wallet_balance(&self, user_id: i64) -> anyhow::Result<i64> {
        #[derive(Deserialize)]
        struct Wallet {
            balance: i64,
        }
        let req = self
            .http
            .get(self.url(&format!("/admin/wallets/{user_id}")));
        let wallet: Wallet = self
            .admin_call(req, "GET /admin/wallets/{id}", &[StatusCode::OK])
            .await?;
        Ok(wallet.balance)
    }

    async fn preheat(&self, event_id: i64) -> anyhow::Result<()> {
        let req = self
            .http
            .post(self.url(&format!("/admin/events/{event_id}/preheat")));
        let _: serde_json::Value = self
            .admin_call(req, "POST /admin/events/{id}/preheat", &[StatusCode::OK])
            .await?;
        Ok(())
    }

    /// `GET /admin/events/{id}`.
    pub async fn event(&self, event_id: i64) -> anyhow::Result<AdminEvent> {
        let req = self
            .http
            .get(self.url(&format!("/admin/events/{event_id}")));
        self.admin_call(req, "GET /admin/events/{id}", &[StatusCode::OK])
            .await
    }

    /// The engine's own checker; `None` when this engine has no such route.
    pub async fn invariants(&self, event_id: i64) -> anyhow::Result<Option<Invariants>> {
        self.invariants_within(event_id, Duration::from_secs(120))
            .await
    }

    /// [`Api::invariants`], waiting up to `within` (the checker's Postgres
    /// side reads the whole event: minutes over millions of orders).
    pub async fn invariants_within(
        &self,
        event_id: i64,
        within: Duration,
    ) -> anyhow::Result<Option<Invariants>> {
        let url = self.url(&format!("/admin/events/{event_id}/invariants"));
        let probe = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.admin.clone())
            .timeout(within)
            .send()
            .await
            .context("GET /admin/events/{id}/invariants: request failed")?;
        match probe.status() {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                // An unknown route and an unknown event both say 404; only the
                // former means "no checker", and our event exists.
                return Ok(None);
            }
            StatusCode::OK => {}
            other => bail!("GET /admin/events/{{id}}/invariants: HTTP {other}"),
        }
        let body = probe.bytes().await?;
        let inv = serde_json::from_slice(&body).with_context(|| {
            format!(
                "invariants: unexpected body: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            )
        })?;
        Ok(Some(inv))
    }

    /// `GET /api/orders/{order_no}` as `bearer`: `None` on 404.
    pub async fn order(
        &self,
        order_no: Uuid,
        bearer: HeaderValue,
    ) -> anyhow::Result<Option<Order>> {
        let resp = self
            .http
            .get(self.url(&format!("/api/orders/{order_no}")))
            .header(reqwest::header::AUTHORIZATION, bearer)
            .timeout(self.timeout)
            .send()
            .await
            .context("GET /api/orders/{order_no}: request failed")?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => Ok(Some(resp.json().await.context("order body")?)),
            other => bail!("GET /api/orders/{order_no}: HTTP {other}"),
        }
    }

    /// One purchase attempt; never fails, every answer becomes an outcome.
    pub async fn purchase(
        &self,
        url: &Url,
        bearer: HeaderValue,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> PurchaseResult {
        let started = Instant::now();
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, bearer)
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .timeout(self.timeout)
            .body(body);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let result = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(bytes) => classify(status, &bytes),
                    Err(err) => transport(&err),
                }
            }
            Err(err) => transport(&err),
        };
        let (outcome, order_no, unexpected) = result;
        PurchaseResult {
            outcome,
            latency: started.elapsed(),
            order_no,
            unexpected,
        }
    }

    /// `POST /api/orders/{order_no}/cancel` as `bearer`: the answer's status
    /// and error code (empty on 200; `transport` when no answer came).
    pub async fn cancel(&self, order_no: Uuid, bearer: HeaderValue) -> (u16, String) {
        let resp = self
            .http
            .post(self.url(&format!("/api/orders/{order_no}/cancel")))
            .header(reqwest::header::AUTHORIZATION, bearer)
            .timeout(self.timeout)
            .send()
            .await;
        match resp {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap_or_default();
                (status, error_code(&body))
            }
            Err(_) => (0, "transport".into()),
        }
    }

    /// Absolute purchase URL of an event, built once per run.
    pub fn purchase_url(&self, event_id: i64) -> anyhow::Result<Url> {
        let url = self.url(&format!("/api/events/{event_id}/purchase"));
        Url::parse(&url).with_context(|| format!("bad purchase URL {url}"))
    }
}
