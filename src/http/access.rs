//! Every request counted, timed and (as configured) logged, in one layer
//! that wraps every other: rejections made before a handler runs (401, 413,
//! 415, 429, malformed JSON, timeouts, panics) are counted like any answer.
//!
//! - `seckill_http_requests_total{route,method,status}`: `route` is the
//!   matched path template (`/api/events/{id}/purchase`) or `unmatched`, so
//!   the series stay bounded whatever paths clients send;
//! - `seckill_http_request_duration_seconds{route}`: until the response head;
//! - one `info` line per request on the `seckill::access` target
//!   (`SECKILL_ACCESS_LOG`): request id, method, route, status, latency.
//!
//! The hot path does no allocation and no registry lookup: the metric
//! handles of each (route, method, status) are kept in a small table under a
//! read lock (filled the first time a combination is seen), the future is a
//! plain struct (no box), and the access-log decision is one atomic add.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    response::Response,
};
use tower::{Layer, Service};

use crate::config::AccessLog;

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Wraps a service with [`Access`].
#[derive(Clone)]
pub struct AccessLayer {
    table: Arc<RouteTable>,
    log: Arc<LogSampler>,
}

impl AccessLayer {
    pub fn new(log: AccessLog) -> Self {
        Self {
            table: Arc::default(),
            log: Arc::new(LogSampler {
                mode: log,
                seen: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            table: self.table.clone(),
            log: self.log.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    table: Arc<RouteTable>,
    log: Arc<LogSampler>,
}

impl<S> Service<Request> for Access<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let route = self.table.route(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str()),
        );
        let method = request.method().clone();
        AccessFuture {
            inner: self.inner.call(request),
            seen: Some(Seen {
                started,
                route,
                method,
                log: self.log.clone(),
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response future, and what to record when it is ready.
    pub struct AccessFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

struct Seen {
    started: Instant,
    route: Arc<RouteMetrics>,
    method: Method,
    log: Arc<LogSampler>,
}

impl<F, E> Future for AccessFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(seen), Ok(response)) = (this.seen.take(), &result) {
            seen.record(response);
        }
        Poll::Ready(result)
    }
}

impl Seen {
    fn record(self, response: &Response) {
        let status = response.status().as_u16();
        let took = self.started.elapsed();
        self.route.count(&self.method, status);
        self.route.latency.record(took.as_secs_f64());
        if self.log.wants(status) {
            // The id the request came with or was given, echoed on the response.
            let request_id = response
                .headers()
                .get(super::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info!(
                target: "seckill::access",
                request_id,
                method = %self.method,
                route = %self.route.name,
                status,
                latency_ms = took.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }
}

/// The metric handles of every route seen so far, by route template.
#[derive(Default)]
struct RouteTable {
    routes: RwLock<HashMap<Box<str>, Arc<RouteMetrics>>>,
    unmatched: std::sync::OnceLock<Arc<RouteMetrics>>,
}

impl RouteTable {
    fn route(&self, template: Option<&str>) -> Arc<RouteMetrics> {
        let Some(template) = template else {
            return self
                .unmatched
                .get_or_init(|| Arc::new(RouteMetrics::new(UNMATCHED)))
                .clone();
        };
        if let Some(found) = self.routes.read().expect("route table").get(template) {
            return found.clone();
        }
        self.routes
            .write()
            .expect("route table")
            .entry(template.into())
            .or_insert_with(|| Arc::new(RouteMetrics::new(template)))
            .clone()
    }
}

/// One route's latency histogram and its counters by (method, status).
struct RouteMetrics {
    name: Box<str>,
    latency: metrics::Histogram,
    counters: RwLock<Vec<(Method, u16, metrics::Counter)>>,
}

impl RouteMetrics {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            latency: metrics::histogram!(
                "seckill_http_request_duration_seconds",
                "route" => name.to_owned()
            ),
            counters: RwLock::default(),
        }
    }

    fn count(&self, method: &Method, status: u16) {
        let known = self
            .counters
            .read()
            .expect("route counters")
            .iter()
            .find(|(m, s, _)| *s == status && m == method)
            .map(|(_, _, c)| c.clone());
        let counter = known.unwrap_or_else(|| {
            let mut counters = self.counters.write().expect("route counters");
            let counter = metrics::counter!(
                "seckill_http_requests_total",
                "route" => self.name.to_string(),
                "method" => method_label(method),
                "status" => status.to_string()
            );
            counters.push((method.clone(), status, counter.clone()));
            counter
        });
        counter.increment(1);
    }
}

/// Standard methods by name; anything else is `other` (clients choose
/// methods freely, the series must stay bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Which requests get an access-log line.
struct LogSampler {
    mode: AccessLog,
    seen: AtomicU64,
}

impl LogSampler {
    /// `sample:N` logs one request in N, and every 5xx.
    fn wants(&self, status: u16) -> bool {
        match self.mode {
            AccessLog::Off => false,
            AccessLog::All => true,
            AccessLog::Sample(n) => {
                status >= 500 || self.seen.fetch_add(1, Ordering::Relaxed) % n.get() == 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_logs_one_in_n_and_every_server_error() {
        let sampler = LogSampler {
            mode: AccessLog::Sample(std::num::NonZeroU64::new(10).unwrap()),
            seen: AtomicU64::new(0),
        };
        let logged = (0..100).filter(|_| sampler.wants(200)).count();
        assert_eq!(logged, 10);
        assert!((0..5).all(|_| sampler.wants(503)));
        let off = LogSampler {
            mode: AccessLog::Off,
            seen: AtomicU64::new(0),
        };
        assert!(!off.wants(500));
    }

    #[test]
    fn routes_share_handles_and_unknown_methods_are_other() {
        let table = RouteTable::default();
        let a = table.route(Some("/api/events/{id}"));
        let b = table.route(Some("/api/events/{id}"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*table.route(None).name, UNMATCHED);
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        a.count(&Method::GET, 200);
        a.count(&Method::GET, 200);
        a.count(&odd, 405);
        assert_eq!(a.counters.read().unwrap().len(), 2);
    }
}
