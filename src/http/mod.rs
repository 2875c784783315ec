//! The HTTP surface: one module per resource, one router.

pub mod access;
pub mod admin;
pub mod cors;
pub mod dashboard;
pub mod events;
pub mod extract;
pub mod lifecycle;
pub mod openapi;
pub mod operator_orders;
pub mod ops;
pub mod orders;
pub mod purchase;
pub mod reference;
pub mod refunds;
pub mod route_table;
pub mod server;
pub mod wallets;

use std::{any::Any, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::RequestBodyTimeoutLayer,
    trace::TraceLayer,
};

use crate::{
    error::{ApiError, ErrorCode},
    state::AppState,
};
use route_table::RouteTable;

/// Largest request body accepted anywhere (purchase bodies are ~20 bytes).
pub const BODY_LIMIT: usize = 4 * 1024;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route the engine serves, without state or middleware; each one is
/// documented in [`openapi::ApiDoc`] (a test holds them together).
pub fn routes() -> RouteTable {
    let shopper = RouteTable::new("/api")
        .route("/events/{id}", get(events::show))
        .route("/events/{id}/purchase", post(purchase::purchase))
        .route("/orders/{order_no}", get(orders::show))
        .route("/orders/{order_no}/cancel", post(refunds::cancel))
        .route("/me/orders", get(orders::mine));
    let operator = RouteTable::new("/admin")
        .route("/events", post(admin::create_event).get(lifecycle::list))
        .route(
            "/events/{id}",
            get(admin::show_event).patch(lifecycle::edit),
        )
        .route("/events/{id}/end", post(lifecycle::end))
        .route("/events/{id}/pause", post(lifecycle::pause))
        .route("/events/{id}/resume", post(lifecycle::resume))
        .route("/events/{id}/stock", post(lifecycle::adjust_stock))
        .route("/events/{id}/preheat", post(admin::preheat))
        .route("/events/{id}/invariants", get(admin::invariants))
        .route("/wallets/seed", post(admin::seed_wallets))
        .route(
            "/wallets/{user_id}",
            put(admin::set_wallet).get(admin::show_wallet),
        )
        .route("/wallets/{user_id}/credit", post(wallets::credit))
        .route("/wallets/{user_id}/ledger", get(wallets::ledger))
        .route("/orders", get(operator_orders::list))
        .route("/orders/{order_no}/refund", post(refunds::refund))
        .route("/events/{id}/orders/export", get(operator_orders::export))
        .route("/reconcile", post(admin::reconcile))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/data", get(dashboard::data));
    RouteTable::new("")
        .nest(shopper)
        .nest(operator)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(reference::page))
}

pub fn router(state: AppState) -> Router {
    let body_timeout = state.settings.http.body_timeout;
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request| {
        let path = req.extensions().get::<MatchedPath>().map_or(req.uri().path(), |p| p.as_str());
        let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info_span!("request", method = %req.method(), path, request_id, event_id = tracing::field::Empty, user_id = tracing::field::Empty)
    });

    // Outside every rejection: what the layers below refuse is counted too.
    let access = access::AccessLayer::new(state.settings.access_log);
    let cors = cors::layer(&state.settings.cors_origins);

    routes()
        .into_router()
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error": ErrorCode::MethodNotAllowed.as_str(), "message": "method not allowed on this route"})),
            )
        })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(access)
                .option_layer(cors)
                // One body type from here out (axum's own, not boxed again later).
                .map_response(IntoResponse::into_response)
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(RequestBodyTimeoutLayer::new(body_timeout))
                .layer(DefaultBodyLimit::max(BODY_LIMIT))
                .map_response(json_errors),
        )
        .with_state(state)
}

/// Every error leaves as the JSON error body, also those made outside the
/// handlers (the framework's own rejections, timeouts): an error response
/// that is not JSON gets the body for its status.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::InvalidRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    }
    .as_str();
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({"error": code, "message": message}).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A panic answers 500 with the usual body and no internals.
fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal("panic".into()).into_response()
}

/// The longest a keyed purchase may take before it is answered 408 (the
/// idempotency module presumes an attempt older than its STALE_AFTER dead).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
