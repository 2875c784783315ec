//! Typed settings: defaults, overridden by `SECKILL_*` environment variables,
//! validated once at start so a bad deployment refuses to boot with a reason.

use std::{fmt, net::SocketAddr, num::NonZeroU64, time::Duration};

use anyhow::{bail, Context};

pub use crate::forwarded::TrustedProxies;

/// Everything the engine reads from its environment (SPEC §9).
#[derive(Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub admin_token: String,
    pub jwt_secret: Vec<u8>,
    pub rate: RateSettings,
    pub writer: WriterSettings,
    pub reconcile_interval: Duration,
    /// How old a pending intent must be before the reconciler replays it; the
    /// writers normally persist within milliseconds.
    pub reconcile_grace: Duration,
    pub log_format: LogFormat,
    /// Postgres pool size.
    pub database_pool: u32,
    /// Redis pool size (connections, each pipelined).
    pub redis_pool: usize,
    /// Threads of the runtime the writers, the outbox relay, the reconciler
    /// and the dashboard sampler run on, apart from the HTTP workers
    /// (`SECKILL_BACKGROUND_THREADS`).
    pub background_threads: usize,
    /// How long one Redis command may take before the request answers 503.
    pub redis_timeout: Duration,
    /// When a 202 may be sent: after Redis recorded the intent (`ledger`), or
    /// after Postgres committed the order (`durable`).
    pub ack: AckMode,
    /// Under `durable`: longest wait for the commit before answering 503.
    pub ack_timeout: Duration,
    pub http: HttpSettings,
    /// Which requests get an access-log line (`SECKILL_ACCESS_LOG`).
    pub access_log: AccessLog,
    /// Peers whose `X-Forwarded-For` / `Forwarded` name the client
    /// (`SECKILL_TRUSTED_PROXIES`); empty: the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
    /// Browser origins allowed to call the API (`SECKILL_CORS_ORIGINS`);
    /// empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Benchmark only (`seckill serve --ablation`): how much of the purchase
    /// path runs. Never read from the environment.
    pub purchase_layers: PurchaseLayers,
    /// The outbox relay to NATS JetStream.
    pub outbox: OutboxSettings,
}

/// Where the outbox relay publishes order events, and how long published
/// rows are kept (`SECKILL_NATS_*`, `SECKILL_OUTBOX_KEEP_MINUTES`).
#[derive(Clone, Debug)]
pub struct OutboxSettings {
    /// `None` (`SECKILL_NATS_URL` empty or `off`): no relay runs; the outbox
    /// still records every event, published once a relay runs again.
    pub nats_url: Option<String>,
    /// JetStream stream, created on start if missing.
    pub stream: String,
    /// Subjects are `<prefix>.<event_id>.<kind without "order.">`.
    pub subject_prefix: String,
    /// Published rows older than this are deleted.
    pub keep: Duration,
    /// The relay publishes nothing while this process answers more purchase
    /// requests per second than this (`SECKILL_OUTBOX_YIELD_RPS`; `None`,
    /// from 0: never yields)...
    pub yield_rps: Option<u64>,
    /// ...unless the oldest owed event is this old (`SECKILL_OUTBOX_MAX_LAG_SECS`).
    pub max_lag: Duration,
}

/// The purchase path's layers, cumulative, for the cost ablation in
/// `make bench`. Anything below [`PurchaseLayers::Full`] answers 202 without
/// persisting the order and runs no reconciler: a measuring instrument, not a
/// mode to sell in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PurchaseLayers {
    /// `purchase.lua` behind axum: the shopper is the bearer string, hashed.
    Script,
    /// + the JWT verified.
    Token,
    /// + the global, per-IP and per-shopper rate limits.
    Limits,
    /// + the `Idempotency-Key` flow (Redis claim, Postgres key row).
    Idempotency,
    /// + the hand-off to the writers and the reconciler: the engine.
    Full,
}

impl std::str::FromStr for PurchaseLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "script" => Self::Script,
            "token" => Self::Token,
            "limits" => Self::Limits,
            "idempotency" => Self::Idempotency,
            "full" => Self::Full,
            other => {
                return Err(format!(
                    "{other:?}: expected script, token, limits, idempotency or full"
                ))
            }
        })
    }
}

/// When the engine acknowledges a purchase (`SECKILL_ACK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// The 202 follows the atomic step in Redis that wrote the intent to the
    /// event's ledger; what is acknowledged is as durable as Redis is.
    Ledger,
    /// The 202 follows the commit of the order's writer batch (a group
    /// commit): no Redis persistence mode can lose an acknowledged purchase.
    Durable,
}

/// Connection handling and graceful shutdown.
#[derive(Clone, Copy, Debug)]
pub struct HttpSettings {
    /// Longest wait for a request's head, also between requests on a
    /// keep-alive connection: a slow or idle client is disconnected.
    pub header_timeout: Duration,
    /// Longest wait for a request's body once its head has arrived.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still
    /// served, so a balancer stops sending before the listener closes.
    pub ready_delay: Duration,
    /// Bound on the whole graceful shutdown: requests, then the writers.
    /// Whatever is not finished by then stays in the Redis ledger.
    pub shutdown_grace: Duration,
}

/// Governor quotas; `0` turns a limiter off.
#[derive(Clone, Copy, Debug)]
pub struct RateSettings {
    pub global_rps: u32,
    pub user_rps: u32,
    pub user_burst: u32,
    pub ip_rps: u32,
    pub ip_burst: u32,
}

/// The writer pool that drains the channel into Postgres.
#[derive(Clone, Copy, Debug)]
pub struct WriterSettings {
    pub workers: usize,
    pub batch_max: usize,
    pub channel_capacity: usize,
    /// Longest a worker waits to fill a batch once it holds one intent.
    pub batch_linger: Duration,
}

/// `SECKILL_ACCESS_LOG`: `off`, `all`, or `sample:N` (one request in N,
/// and every 5xx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    All,
    Sample(NonZeroU64),
}

impl std::str::FromStr for AccessLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(Self::Off),
            "all" => Ok(Self::All),
            other => other
                .strip_prefix("sample:")
                .and_then(|n| n.trim().parse::<NonZeroU64>().ok())
                .map(Self::Sample)
                .ok_or_else(|| format!("expected off, all or sample:<N> (N >= 1), got {other:?}")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

// Secrets never reach a log line.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("admin_token", &"<redacted>")
            .field("jwt_secret", &"<redacted>")
            .field("rate", &self.rate)
            .field("writer", &self.writer)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("reconcile_grace", &self.reconcile_grace)
            .field("log_format", &self.log_format)
            .field("ack", &self.ack)
            .field("http", &self.http)
            .field("access_log", &self.access_log)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cors_origins", &self.cors_origins)
            .field("purchase_layers", &self.purchase_layers)
            .field("outbox", &self.outbox)
            .finish()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Settings {
    /// Reads the process environment (after `.env`, when present).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds settings from any variable source; tests pass a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let parsed = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name} must be a non-negative integer, got {v:?}")),
            }
        };

        let bind = var("SECKILL_BIND").unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind: SocketAddr = bind
            .parse()
            .with_context(|| format!("SECKILL_BIND is not an address: {bind:?}"))?;

        let admin_token = var("SECKILL_ADMIN_TOKEN")
            .context("SECKILL_ADMIN_TOKEN is required (at least 16 characters)")?;
        if admin_token.len() < 16 {
            bail!("SECKILL_ADMIN_TOKEN must be at least 16 characters");
        }
        let jwt_secret = var("SECKILL_JWT_SECRET")
            .context("SECKILL_JWT_SECRET is required (at least 32 bytes)")?;
        if jwt_secret.len() < 32 {
            bail!("SECKILL_JWT_SECRET must be at least 32 bytes");
        }

        let redis_prefix = var("SECKILL_REDIS_PREFIX").unwrap_or_else(|| "sk".into());
        if redis_prefix.is_empty()
            || redis_prefix.len() > 64
            || !redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            bail!("SECKILL_REDIS_PREFIX must be 1..=64 characters of [A-Za-z0-9_.-]");
        }

        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let writer = WriterSettings {
            workers: parsed("SECKILL_WRITERS", cores.max(2) as u64)? as usize,
            batch_max: parsed("SECKILL_BATCH_MAX", 512)? as usize,
            channel_capacity: parsed("SECKILL_CHANNEL_CAPACITY", 65_536)? as usize,
            batch_linger: Duration::from_millis(parsed("SECKILL_BATCH_LINGER_MS", 2)?),
        };
        if writer.workers == 0 || writer.batch_max == 0 || writer.channel_capacity == 0 {
            bail!("SECKILL_WRITERS, SECKILL_BATCH_MAX and SECKILL_CHANNEL_CAPACITY must be at least 1");
        }

        let u32_of = |name: &str, default: u64| -> anyhow::Result<u32> {
            u32::try_from(parsed(name, default)?).with_context(|| format!("{name} is too large"))
        };
        let rate = RateSettings {
            global_rps: u32_of("SECKILL_RATE_GLOBAL_RPS", 200_000)?,
            user_rps: u32_of("SECKILL_RATE_USER_RPS", 5)?,
            user_burst: u32_of("SECKILL_RATE_USER_BURST", 10)?,
            ip_rps: u32_of("SECKILL_RATE_IP_RPS", 200)?,
            ip_burst: u32_of("SECKILL_RATE_IP_BURST", 400)?,
        };

        let log_format = match var("SECKILL_LOG_FORMAT").as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => bail!("SECKILL_LOG_FORMAT must be pretty or json, got {other:?}"),
        };

        let ack = match var("SECKILL_ACK").as_deref().unwrap_or("ledger") {
            "ledger" => AckMode::Ledger,
            "durable" => AckMode::Durable,
            other => bail!("SECKILL_ACK must be ledger or durable, got {other:?}"),
        };
        let millis = |name: &str, default: u64| parsed(name, default).map(Duration::from_millis);
        let http = HttpSettings {
            header_timeout: millis("SECKILL_HEADER_TIMEOUT_MS", 10_000)?
                .max(Duration::from_millis(100)),
            body_timeout: millis("SECKILL_BODY_TIMEOUT_MS", 5_000)?.max(Duration::from_millis(100)),
            max_connections: parsed("SECKILL_MAX_CONNECTIONS", 10_000)?.max(1) as usize,
            ready_delay: millis("SECKILL_SHUTDOWN_READY_DELAY_MS", 1_000)?,
            shutdown_grace: millis("SECKILL_SHUTDOWN_GRACE_MS", 10_000)?
                .max(Duration::from_millis(100)),
        };
        let ack_timeout = millis("SECKILL_ACK_TIMEOUT_MS", 5_000)?;
        if ack_timeout.is_zero() || ack_timeout > Duration::from_secs(8) {
            bail!("SECKILL_ACK_TIMEOUT_MS must be in 1..=8000 (a request lives at most 10 s)");
        }

        let access_log = match var("SECKILL_ACCESS_LOG") {
            None => AccessLog::Sample(NonZeroU64::new(100).expect("non-zero")),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("SECKILL_ACCESS_LOG: {e}"))?,
        };
        let trusted_proxies: TrustedProxies = var("SECKILL_TRUSTED_PROXIES")
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("SECKILL_TRUSTED_PROXIES: {e}"))?;
        let cors_origins = cors_origins(var("SECKILL_CORS_ORIGINS").as_deref().unwrap_or(""))?;

        let reconcile_interval =
            Duration::from_millis(parsed("SECKILL_RECONCILE_INTERVAL_MS", 5_000)?.max(10));
        let outbox = OutboxSettings {
            nats_url: match get("SECKILL_NATS_URL") {
                None => Some("nats://127.0.0.1:4222".into()),
                Some(url) if url.trim().is_empty() || url.trim() == "off" => None,
                Some(url) => Some(url.trim().to_owned()),
            },
            stream: var("SECKILL_NATS_STREAM").unwrap_or_else(|| "SECKILL_ORDERS".into()),
            subject_prefix: var("SECKILL_NATS_SUBJECT_PREFIX")
                .unwrap_or_else(|| "seckill.orders".into()),
            keep: Duration::from_secs(60 * parsed("SECKILL_OUTBOX_KEEP_MINUTES", 60)?),
            yield_rps: Some(parsed("SECKILL_OUTBOX_YIELD_RPS", 1_000)?).filter(|r| *r > 0),
            max_lag: Duration::from_secs(parsed("SECKILL_OUTBOX_MAX_LAG_SECS", 10)?),
        };
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token_ok(&outbox.stream) || !outbox.subject_prefix.split('.').all(token_ok) {
            bail!("SECKILL_NATS_STREAM must be [A-Za-z0-9_-]+ and SECKILL_NATS_SUBJECT_PREFIX dot-separated tokens of them");
        }
        Ok(Self {
            bind,
            database_url: var("SECKILL_DATABASE_URL")
                .or_else(|| var("DATABASE_URL"))
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/seckill".into()),
            redis_url: var("SECKILL_REDIS_URL")
                .or_else(|| var("REDIS_URL"))
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            redis_prefix,
            admin_token,
            jwt_secret: jwt_secret.into_bytes(),
            rate,
            writer,
            reconcile_interval,
            reconcile_grace: Duration::from_millis(parsed("SECKILL_RECONCILE_GRACE_MS", 3_000)?),
            log_format,
            database_pool: parsed("SECKILL_DATABASE_POOL", (writer.workers as u64 + 8).max(10))?
                as u32,
            redis_pool: parsed("SECKILL_REDIS_POOL", 4)?.max(1) as usize,
            background_threads: parsed("SECKILL_BACKGROUND_THREADS", 1)?.max(1) as usize,
            redis_timeout: Duration::from_millis(
                parsed("SECKILL_REDIS_TIMEOUT_MS", 2_000)?.max(50),
            ),
            ack,
            ack_timeout,
            purchase_layers: PurchaseLayers::Full,
            http,
            access_log,
            trusted_proxies,
            cors_origins,
            outbox,
        })
    }
}

/// A comma-separated list of origins (`https://shop.example.com`), each a
/// scheme and host with an optional port and nothing else.
fn cors_origins(raw: &str) -> anyhow::Result<Vec<String>> {
    raw.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ', '*']) => {
                    Ok(origin.to_owned())
                }
                _ => bail!(
                    "SECKILL_CORS_ORIGINS: {origin:?} is not an origin like https://shop.example.com"
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    const OK: [(&str, &str); 2] = [
        ("SECKILL_ADMIN_TOKEN", "0123456789abcdef"),
        ("SECKILL_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn refuses_missing_or_weak_secrets() {
        assert!(with(&[])
            .unwrap_err()
            .to_string()
            .contains("SECKILL_ADMIN_TOKEN"));
        let short = with(&[OK[0], ("SECKILL_JWT_SECRET", "short")]).unwrap_err();
        assert!(short.to_string().contains("32 bytes"), "{short}");
        assert!(with(&[("SECKILL_ADMIN_TOKEN", "short"), OK[1]]).is_err());
    }

    #[test]
    fn defaults_and_overrides() {
        let s = with(&OK).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.redis_prefix, "sk");
        let s = with(&[
            OK[0],
            OK[1],
            ("SECKILL_RATE_USER_RPS", "0"),
            ("DATABASE_URL", "postgres://x@h/db"),
        ])
        .unwrap();
        assert_eq!(s.rate.user_rps, 0);
        assert_eq!(s.database_url, "postgres://x@h/db");
        assert!(with(&[OK[0], OK[1], ("SECKILL_WRITERS", "zero")]).is_err());
        assert!(with(&[OK[0], OK[1], ("SECKILL_REDIS_PREFIX", "a b")]).is_err());
    }

    #[test]
    fn access_log_proxies_and_origins() {
        let s = with(&OK).unwrap();
        assert_eq!(
            s.access_log,
            AccessLog::Sample(NonZeroU64::new(100).unwrap())
        );
        assert!(s.trusted_proxies.is_empty() && s.cors_origins.is_empty());
        let s = with(&[
            OK[0],
            OK[1],
            ("SECKILL_ACCESS_LOG", "sample:7"),
            ("SECKILL_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            (
                "SECKILL_CORS_ORIGINS",
                "https://shop.example.com, http://localhost:3000",
            ),
        ])
        .unwrap();
        assert_eq!(s.access_log, AccessLog::Sample(NonZeroU64::new(7).unwrap()));
        assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(s.cors_origins.len(), 2);
        for (name, bad) in [
            ("SECKILL_ACCESS_LOG", "sample:0"),
            ("SECKILL_ACCESS_LOG", "some"),
            ("SECKILL_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("SECKILL_CORS_ORIGINS", "https://shop.example.com/path"),
            ("SECKILL_CORS_ORIGINS", "*"),
        ] {
            let err = with(&[OK[0], OK[1], (name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn nats_relay_on_by_default_and_off_when_asked() {
        let s = with(&OK).unwrap();
        assert_eq!(s.outbox.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        for off in ["off", "", " "] {
            let s = with(&[OK[0], OK[1], ("SECKILL_NATS_URL", off)]).unwrap();
            assert_eq!(s.outbox.nats_url, None, "{off:?}");
        }
        assert!(with(&[OK[0], OK[1], ("SECKILL_NATS_SUBJECT_PREFIX", "a.>")]).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let s = with(&[
            OK[0],
            OK[1],
            ("SECKILL_DATABASE_URL", "postgres://u:pw@h/db"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains("pw"),
            "{shown}"
        );
    }
}
