//! The HTTP surface: one module per resource, one router.

pub mod admin;
pub mod dashboard;
pub mod events;
pub mod extract;
pub mod ops;
pub mod orders;
pub mod purchase;

use std::{any::Any, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{error::ApiError, state::AppState};

/// Largest request body accepted anywhere (purchase bodies are ~20 bytes).
pub const BODY_LIMIT: usize = 4 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let shopper = Router::new()
        .route("/events/{id}", get(events::show))
        .route("/events/{id}/purchase", post(purchase::purchase))
        .route("/orders/{order_no}", get(orders::show))
        .route("/me/orders", get(orders::mine));
    let operator = Router::new()
        .route("/events", post(admin::create_event))
        .route("/events/{id}", get(admin::show_event))
        .route("/events/{id}/preheat", post(admin::preheat))
        .route("/events/{id}/invariants", get(admin::invariants))
        .route("/wallets/seed", post(admin::seed_wallets))
        .route(
            "/wallets/{user_id}",
            put(admin::set_wallet).get(admin::show_wallet),
        )
        .route("/reconcile", post(admin::reconcile))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/data", get(dashboard::data));

    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request| {
        let path = req.extensions().get::<MatchedPath>().map_or(req.uri().path(), |p| p.as_str());
        let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info_span!("request", method = %req.method(), path, request_id, event_id = tracing::field::Empty, user_id = tracing::field::Empty)
    });

    Router::new()
        .nest("/api", shopper)
        .nest("/admin", operator)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error": "method_not_allowed", "message": "method not allowed on this route"})),
            )
        })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}

/// A panic answers 500 with the usual body and no internals.
fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal("panic".into()).into_response()
}

/// How long shutdown waits for in-flight requests.
pub const DRAIN_REQUESTS_FOR: Duration = Duration::from_secs(10);
