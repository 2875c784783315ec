//! The operator's client: the admin API over HTTP, for the `seckill event`,
//! `seckill wallets` and `seckill reconcile` commands. It talks to a running
//! engine (or a balancer in front of several) with the admin token; it never
//! opens Redis or Postgres itself, so what it does is exactly what the admin
//! routes allow, with their checks and fences.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

/// Wallets set per request when seeding many: each request is one
/// Postgres statement, short enough to show progress and to retry.
pub const SEED_CHUNK: i64 = 10_000;

/// A client of one engine's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A new sale, as `POST /admin/events` takes it.
#[derive(Debug, Serialize)]
pub struct NewSale {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: i32,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub ends_at: chrono::DateTime<chrono::Utc>,
    pub stock_buckets: i32,
}

/// One page of `GET /admin/events`.
pub struct EventsPage {
    pub events: Vec<Value>,
    pub next: Option<i64>,
}

impl AdminClient {
    /// `base` is the engine's address (`http://host:port`).
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("SECKILL_URL must be an http:// address (got {base:?}); reach a TLS endpoint through a local tunnel or the balancer's plain listener");
        }
        if token.is_empty() {
            bail!("SECKILL_ADMIN_TOKEN is empty");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base,
            token: token.to_string(),
            http,
        })
    }

    pub async fn create_event(&self, sale: &NewSale) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, "/admin/events", Some(json!(sale)))
            .await
    }

    pub async fn preheat(&self, id: i64, force: bool) -> anyhow::Result<Value> {
        let path = format!(
            "/admin/events/{id}/preheat{}",
            if force { "?force=true" } else { "" }
        );
        self.send(reqwest::Method::POST, &path, None).await
    }

    pub async fn show_event(&self, id: i64) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, &format!("/admin/events/{id}"), None)
            .await
    }

    /// One page of events, `after` the id the previous page ended with.
    pub async fn list_events(
        &self,
        status: Option<&str>,
        after: Option<i64>,
        limit: u32,
    ) -> anyhow::Result<EventsPage> {
        let mut path = format!("/admin/events?limit={limit}");
        if let Some(status) = status {
            path.push_str(&format!("&status={status}"));
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let page = self.send(reqwest::Method::GET, &path, None).await?;
        let events = page["events"]
            .as_array()
            .context("the engine's answer has no events list")?
            .clone();
        Ok(EventsPage {
            events,
            next: page["next"].as_i64(),
        })
    }

    /// Sets wallets `first..first + count` to `balance` (creating those that
    /// do not exist) in chunks of [`SEED_CHUNK`], calling `progress` with the
    /// number done after each; returns how many were set.
    pub async fn seed_wallets(
        &self,
        first: i64,
        count: i64,
        balance: i64,
        mut progress: impl FnMut(i64),
    ) -> anyhow::Result<i64> {
        if first < 1 || count < 1 {
            bail!("--first and --count must be positive");
        }
        let mut set = 0;
        let mut done = 0;
        while done < count {
            let chunk = SEED_CHUNK.min(count - done);
            let answer = self
                .send(
                    reqwest::Method::POST,
                    "/admin/wallets/seed",
                    Some(
                        json!({"first_user_id": first + done, "count": chunk, "balance": balance}),
                    ),
                )
                .await?;
            set += answer["created"].as_i64().unwrap_or(0);
            done += chunk;
            progress(done);
        }
        Ok(set)
    }

    pub async fn reconcile(&self) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, "/admin/reconcile", None)
            .await
    }

    /// Sends one admin request; a non-2xx answer becomes an error with the
    /// engine's error code and message.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the engine at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("reading the engine's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let code = value["error"].as_str().unwrap_or("error");
            let message = value["message"].as_str().unwrap_or("");
            bail!("{path}: {status} {code}: {message}");
        }
        Ok(value)
    }
}

/// A time given on the command line: RFC 3339, or relative to now
/// (`+90s`, `+10m`, `+2h`, `now`).
pub fn parse_when(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now();
    if text == "now" {
        return Ok(now);
    }
    if let Some(relative) = text.strip_prefix('+') {
        let (digits, unit) = relative.split_at(relative.len().saturating_sub(1));
        let n: i64 = digits
            .parse()
            .with_context(|| format!("{text:?}: expected +<n>s, +<n>m or +<n>h"))?;
        let offset = match unit {
            "s" => chrono::Duration::seconds(n),
            "m" => chrono::Duration::minutes(n),
            "h" => chrono::Duration::hours(n),
            _ => bail!("{text:?}: expected +<n>s, +<n>m or +<n>h"),
        };
        return Ok(now + offset);
    }
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?}: expected RFC 3339 (2026-11-21T20:00:00Z) or +10m"))?
        .with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_absolute_or_relative_to_now() {
        let before = chrono::Utc::now();
        let t = parse_when("+10m").unwrap();
        assert!(t >= before + chrono::Duration::minutes(10));
        assert!(t <= chrono::Utc::now() + chrono::Duration::minutes(10));
        assert_eq!(
            parse_when("2026-11-21T20:00:00Z").unwrap().to_rfc3339(),
            "2026-11-21T20:00:00+00:00"
        );
        assert!(parse_when("+10x").is_err());
        assert!(parse_when("tomorrow").is_err());
        assert!(parse_when("+").is_err());
    }

    #[test]
    fn only_plain_http_addresses_and_a_token() {
        assert!(AdminClient::new("https://example.com", "t").is_err());
        assert!(AdminClient::new("http://127.0.0.1:8080", "").is_err());
        assert!(AdminClient::new("http://127.0.0.1:8080/", "t").is_ok());
    }
}
