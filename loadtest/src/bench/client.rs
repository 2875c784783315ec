//! The benchmark's HTTP client: a fixed set of keep-alive connections, each
//! owned by one task that sends, awaits the whole answer, and sends again.
//!
//! Two implementations behind one type so their cost can be compared in the
//! same run: `hyper` drives one HTTP/1.1 connection per task directly
//! (no pool, no per-request URL parsing: the least client CPU per request),
//! `reqwest` shares one pooled client (`pool_max_idle_per_host` ≥
//! connections) like the scenarios do.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::cli::ClientKind;

/// Where the engine is: `host:port` for sockets and `Host`, the base URL for reqwest.
#[derive(Debug, Clone)]
pub struct Target {
    authority: String,
    host_header: HeaderValue,
    base_url: String,
    timeout: Duration,
}

impl Target {
    /// Parses `http://host[:port]`; port 80 when none is given.
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let Some(rest) = base_url.strip_prefix("http://") else {
            bail!("--base-url must be an http:// URL");
        };
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        if authority.is_empty() {
            bail!("--base-url has no host: {base_url}");
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            host_header: HeaderValue::from_str(&authority)
                .context("--base-url host is not a valid Host header")?,
            authority,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        })
    }
}

/// One prepared request: everything but the per-request token.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Origin-form path, e.g. `/healthz`.
    pub path: String,
    pub body: Option<Bytes>,
    /// Every request carries a fresh `Idempotency-Key` with this prefix.
    pub keyed: Option<String>,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Sequence number of the next `Idempotency-Key`, process-wide.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

impl Call {
    fn idempotency_key(&self) -> Option<HeaderValue> {
        let prefix = self.keyed.as_ref()?;
        let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{prefix}{n}")).ok()
    }
}

/// One keep-alive connection (hyper) or a handle on the shared pool (reqwest).
pub enum Conn {
    Hyper {
        target: Target,
        /// `None` after a failure: reconnect on the next request.
        sender: Option<SendRequest<Full<Bytes>>>,
    },
    Reqwest {
        target: Target,
        client: reqwest::Client,
    },
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Transport,
}

impl Conn {
    /// Opens `n` connections (hyper) or `n` handles on one pool (reqwest).
    pub async fn open(kind: ClientKind, target: &Target, n: usize) -> anyhow::Result<Vec<Conn>> {
        match kind {
            ClientKind::Hyper => {
                let mut conns = Vec::with_capacity(n);
                for _ in 0..n {
                    let sender = connect(target).await?;
                    conns.push(Conn::Hyper {
                        target: target.clone(),
                        sender: Some(sender),
                    });
                }
                Ok(conns)
            }
            ClientKind::Reqwest => {
                let client = reqwest::Client::builder()
                    .http1_only()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(n * 2)
                    .pool_idle_timeout(Duration::from_secs(300))
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(target.timeout)
                    .build()
                    .context("building the reqwest client")?;
                Ok((0..n)
                    .map(|_| Conn::Reqwest {
                        target: target.clone(),
                        client: client.clone(),
                    })
                    .collect())
            }
        }
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        call: &Call,
        auth: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        match self {
            Conn::Hyper { target, sender } => {
                let timeout = target.timeout;
                match tokio::time::timeout(timeout, send_hyper(target, sender, call, auth)).await {
                    Ok(result) => result,
                    Err(_) => {
                        // The answer may still arrive on this connection: drop it.
                        *sender = None;
                        Err(Failure::Timeout)
                    }
                }
            }
            Conn::Reqwest { target, client } => {
                let url = format!("{}{}", target.base_url, call.path);
                let mut req = client.request(call.method.clone(), url);
                if let Some(auth) = auth {
                    req = req.header(header::AUTHORIZATION, auth.clone());
                }
                if let Some(key) = call.idempotency_key() {
                    req = req.header(IDEMPOTENCY_KEY, key);
                }
                if let Some(body) = &call.body {
                    req = req
                        .header(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )
                        .body(body.clone());
                }
                let classify = |err: reqwest::Error| {
                    if err.is_timeout() {
                        Failure::Timeout
                    } else {
                        Failure::Transport
                    }
                };
                let resp = req.send().await.map_err(classify)?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(classify)?;
                Ok((status, body))
            }
        }
    }
}

/// Opens one HTTP/1.1 connection; its I/O runs in its own task (measured:
/// cheaper per request than polling it inside the sending task).
async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(&target.authority),
    )
    .await
    .with_context(|| format!("connecting to {}: timed out", target.authority))?
    .with_context(|| format!("connecting to {}", target.authority))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends when the engine closes the connection or the sender is dropped.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send_hyper(
    target: &Target,
    slot: &mut Option<SendRequest<Full<Bytes>>>,
    call: &Call,
    auth: Option<&HeaderValue>,
) -> Result<(StatusCode, Bytes), Failure> {
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        *slot = Some(connect(target).await.map_err(|_| Failure::Transport)?);
    }
    let sender = slot.as_mut().expect("connected above");
    let mut req = Request::builder()
        .method(call.method.clone())
        .uri(call.path.as_str())
        .header(header::HOST, target.host_header.clone());
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    if let Some(key) = call.idempotency_key() {
        req = req.header(IDEMPOTENCY_KEY, key);
    }
    let body = match &call.body {
        Some(body) => {
            req = req.header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Full::new(body.clone())
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(|_| Failure::Transport)?;
    let exchange = async {
        sender.ready().await.map_err(|_| Failure::Transport)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| Failure::Transport)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Transport)?;
        Ok::<_, Failure>((status, body.to_bytes()))
    };
    let result = exchange.await;
    if result.is_err() {
        *slot = None;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_base_url() {
        let t = Target::new("http://127.0.0.1:18180", Duration::from_secs(1)).unwrap();
        assert_eq!(t.authority, "127.0.0.1:18180");
        let t = Target::new("http://localhost/", Duration::from_secs(1)).unwrap();
        assert_eq!(t.authority, "localhost:80");
        assert!(Target::new("https://x", Duration::from_secs(1)).is_err());
    }
}
