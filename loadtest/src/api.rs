//! The engine's HTTP API as this client uses it (SPEC §3): operator calls with
//! the admin token, shopper calls with HS256 tokens signed here, and the
//! classification of every purchase answer into an [`Outcome`].

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::{header::HeaderValue, Client, StatusCode, Url};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// What one purchase request came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    Accepted,
    SoldOut,
    LimitExceeded,
    NotActive,
    InProgress,
    RateLimited,
    Unavailable,
    OtherRejected,
    ServerError,
    Timeout,
    TransportError,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Accepted,
        Outcome::SoldOut,
        Outcome::LimitExceeded,
        Outcome::NotActive,
        Outcome::InProgress,
        Outcome::RateLimited,
        Outcome::Unavailable,
        Outcome::OtherRejected,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::TransportError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::SoldOut => "sold_out",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::NotActive => "not_active",
            Outcome::InProgress => "in_progress",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
            Outcome::OtherRejected => "other_4xx",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::TransportError => "transport_error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The client cannot know whether such a request left an order: the
    /// engine may have recorded it before the answer was lost or failed.
    pub fn is_ambiguous(self) -> bool {
        matches!(
            self,
            Outcome::Unavailable
                | Outcome::ServerError
                | Outcome::Timeout
                | Outcome::TransportError
        )
    }

    /// The request reached the sale logic and got a verdict on the stock.
    pub fn reached_sale(self) -> bool {
        matches!(
            self,
            Outcome::Accepted | Outcome::SoldOut | Outcome::LimitExceeded
        )
    }
}

/// One classified purchase answer.
#[derive(Debug, Clone)]
pub struct PurchaseResult {
    pub outcome: Outcome,
    pub latency: Duration,
    pub order_no: Option<Uuid>,
    /// `"<status> <error code>"` for answers that are not one of the
    /// expected outcomes, to show in the report.
    pub unexpected: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NewEvent<'a> {
    pub name: &'a str,
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// `GET /admin/events/{id}`: the event with live figures.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminEvent {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock_total: i64,
    pub stock_left: i64,
    pub per_user_limit: i64,
    pub status: String,
    pub sold: i64,
    pub pending: i64,
    pub failed: i64,
    pub confirmed_amount: i64,
}

/// `GET /admin/events/{id}/invariants`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Invariants {
    #[serde(default)]
    pub event_id: i64,
    pub ok: bool,
    #[serde(default)]
    pub checks: Vec<InvariantCheck>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InvariantCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub order_no: Uuid,
    pub user_id: i64,
    #[serde(default)]
    pub status: String,
}

#[derive(Deserialize)]
struct Accepted {
    order_no: Uuid,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

const MAX_CACHED_TOKENS: u64 = 2_000_000;

/// Signs shopper tokens once per shopper, on first use.
pub struct Signer {
    key: EncodingKey,
    first_user_id: i64,
    iat: i64,
    exp: i64,
    tokens: Vec<OnceLock<HeaderValue>>,
}

impl Signer {
    /// Tokens for shoppers `first_user_id ..first_user_id + users`, valid one hour.
    pub fn new(secret: &str, first_user_id: i64, users: u64) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            first_user_id,
            iat: Utc::now().timestamp(),
            exp: Utc::now().timestamp() + 3_600,
            // Cache up to a few million tokens (~100 bytes each); beyond
            // that, sign on every request.
            tokens: (0..users.min(MAX_CACHED_TOKENS))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// `Authorization` header value for a shopper of the run's range.
    pub fn bearer(&self, user_id: i64) -> HeaderValue {
        let slot = usize::try_from(user_id - self.first_user_id)
            .ok()
            .and_then(|i| self.tokens.get(i));
        match slot {
            Some(slot) => slot.get_or_init(|| self.sign(user_id)).clone(),
            None => self.sign(user_id),
        }
    }

    fn sign(&self, user_id: i64) -> HeaderValue {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: self.exp,
            iat: self.iat,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .expect("HS256 signing with an in-memory key cannot fail");
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is a valid header value")
    }
}

/// HTTP client of one engine.
pub struct Api {
    http: Client,
    base: String,
    admin: HeaderValue,
    timeout: Duration,
}

impl Api {
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

    pub async fn create_event(&self, event: &NewEvent<'_>) -> anyhow::Result<AdminEvent> {
        let req = self.http.post(self.url("/admin/events")).json(event);
        self.admin_call(
            req,
            "POST /admin/events",
            &[StatusCode::CREATED, StatusCode::OK],
        )
        .await
    }

    /// Bulk-creates wallets; returns how many the engine says it created.
    pub async fn seed_wallets(&self, first: i64, count: u64, balance: i64) -> anyhow::Result<u64> {
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

    pub async fn preheat(&self, event_id: i64) -> anyhow::Result<()> {
        let req = self
            .http
            .post(self.url(&format!("/admin/events/{event_id}/preheat")));
        let _: serde_json::Value = self
            .admin_call(req, "POST /admin/events/{id}/preheat", &[StatusCode::OK])
            .await?;
        Ok(())
    }

    pub async fn event(&self, event_id: i64) -> anyhow::Result<AdminEvent> {
        let req = self
            .http
            .get(self.url(&format!("/admin/events/{event_id}")));
        self.admin_call(req, "GET /admin/events/{id}", &[StatusCode::OK])
            .await
    }

    /// The engine's own checker; `None` when this engine has no such route.
    pub async fn invariants(&self, event_id: i64) -> anyhow::Result<Option<Invariants>> {
        let url = self.url(&format!("/admin/events/{event_id}/invariants"));
        let probe = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.admin.clone())
            .timeout(Duration::from_secs(120))
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

    /// Absolute purchase URL of an event, built once per run.
    pub fn purchase_url(&self, event_id: i64) -> anyhow::Result<Url> {
        let url = self.url(&format!("/api/events/{event_id}/purchase"));
        Url::parse(&url).with_context(|| format!("bad purchase URL {url}"))
    }
}

type Classified = (Outcome, Option<Uuid>, Option<String>);

fn transport(err: &reqwest::Error) -> Classified {
    if err.is_timeout() {
        (Outcome::Timeout, None, None)
    } else {
        (
            Outcome::TransportError,
            None,
            Some(format!("transport: {err}")),
        )
    }
}

fn classify(status: StatusCode, body: &[u8]) -> Classified {
    let code = || {
        serde_json::from_slice::<ErrorBody>(body)
            .map(|b| b.error)
            .unwrap_or_default()
    };
    match status {
        StatusCode::ACCEPTED => match serde_json::from_slice::<Accepted>(body) {
            Ok(a) => (Outcome::Accepted, Some(a.order_no), None),
            // A 202 without an order number is a broken contract, not a sale.
            Err(_) => (
                Outcome::ServerError,
                None,
                Some("202 without order_no".into()),
            ),
        },
        StatusCode::CONFLICT => {
            let code = code();
            match code.as_str() {
                "sold_out" => (Outcome::SoldOut, None, None),
                "limit_exceeded" => (Outcome::LimitExceeded, None, None),
                "not_active" => (Outcome::NotActive, None, None),
                "in_progress" => (Outcome::InProgress, None, None),
                _ => (Outcome::OtherRejected, None, Some(format!("409 {code}"))),
            }
        }
        StatusCode::TOO_MANY_REQUESTS => (Outcome::RateLimited, None, None),
        StatusCode::SERVICE_UNAVAILABLE => (Outcome::Unavailable, None, None),
        s if s.is_server_error() => (
            Outcome::ServerError,
            None,
            Some(format!("{} {}", s.as_u16(), code())),
        ),
        s => (
            Outcome::OtherRejected,
            None,
            Some(format!("{} {}", s.as_u16(), code())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_contract() {
        let no = Uuid::new_v4();
        let body = format!(r#"{{"order_no":"{no}","status":"pending"}}"#);
        assert_eq!(
            classify(StatusCode::ACCEPTED, body.as_bytes()),
            (Outcome::Accepted, Some(no), None)
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, br#"{"error":"sold_out"}"#).0,
            Outcome::SoldOut
        );
        assert_eq!(
            classify(
                StatusCode::CONFLICT,
                br#"{"error":"limit_exceeded","order_nos":[]}"#
            )
            .0,
            Outcome::LimitExceeded
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"{}").0,
            Outcome::RateLimited
        );
        let (outcome, _, why) = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"invalid_request"}"#,
        );
        assert_eq!(outcome, Outcome::OtherRejected);
        assert_eq!(why.as_deref(), Some("422 invalid_request"));
        assert_eq!(
            classify(StatusCode::ACCEPTED, b"{}").0,
            Outcome::ServerError
        );
    }

    #[test]
    fn signer_caches_per_user() {
        let s = Signer::new("0123456789abcdef0123456789abcdef", 100, 10);
        assert_eq!(s.bearer(105), s.bearer(105));
        assert_ne!(s.bearer(105), s.bearer(106));
        // Outside the range still signs.
        assert!(s.bearer(5).to_str().unwrap().starts_with("Bearer "));
    }
}
