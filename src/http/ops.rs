//! `/healthz`, `/readyz`, `/metrics`: no auth.

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ErrorCode, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: &'static str,
}

#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "ops",
    responses((status = 200, description = "The process is alive", body = Health)),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// One backing service as `/readyz` sees it.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Ok,
    Down,
}

/// `/readyz`: both probes, or while shutting down only `draining`; a 503
/// also carries the error body's `error` and `message`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Ready when both Redis (PING) and Postgres (`SELECT 1`) answer and the
/// process is not shutting down.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "ops",
    responses(
        (status = 200, description = "Redis and Postgres answer", body = Readiness),
        (status = 503, description = "`unavailable`: shutting down, or which of the two is down", body = Readiness),
    ),
)]
pub async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.draining.load(std::sync::atomic::Ordering::Acquire) {
        let body = Readiness {
            redis: None,
            postgres: None,
            draining: Some(true),
            error: Some(ErrorCode::Unavailable),
            message: Some("shutting down".into()),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let (redis, postgres) = tokio::join!(app.redis.ping(), crate::db::ping(&app.db));
    let probe = |ok: bool| Some(if ok { Probe::Ok } else { Probe::Down });
    let mut body = Readiness {
        redis: probe(redis.is_ok()),
        postgres: probe(postgres.is_ok()),
        draining: None,
        error: None,
        message: None,
    };
    if redis.is_ok() && postgres.is_ok() {
        return (StatusCode::OK, Json(body));
    }
    let mut failing = Vec::new();
    if redis.is_err() {
        failing.push("redis");
    }
    if postgres.is_err() {
        failing.push("postgres");
    }
    body.error = Some(ErrorCode::Unavailable);
    body.message = Some(format!("not ready: {} unreachable", failing.join(" and ")));
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("seckill_channel_depth").set(app.writers.depth() as f64);
    let (ips, users) = app.limits.tracked_keys();
    metrics::gauge!("seckill_ratelimit_keys", "kind" => "ip").set(ips as f64);
    metrics::gauge!("seckill_ratelimit_keys", "kind" => "user").set(users as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
