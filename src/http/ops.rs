//! `/healthz`, `/readyz`, `/metrics`: no auth.

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde_json::json;

use crate::state::AppState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when both Redis (PING) and Postgres (`SELECT 1`) answer and the
/// process is not shutting down.
pub async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.draining.load(std::sync::atomic::Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unavailable", "message": "shutting down", "draining": true})),
        );
    }
    let (redis, postgres) = tokio::join!(app.redis.ping(), crate::db::ping(&app.db));
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let body = json!({"redis": word(redis.is_ok()), "postgres": word(postgres.is_ok())});
    if redis.is_ok() && postgres.is_ok() {
        (StatusCode::OK, Json(body))
    } else {
        let mut failing = Vec::new();
        if redis.is_err() {
            failing.push("redis");
        }
        if postgres.is_err() {
            failing.push("postgres");
        }
        let mut body = body;
        body["error"] = json!("unavailable");
        body["message"] = json!(format!("not ready: {} unreachable", failing.join(" and ")));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

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
