//! CORS for the storefront origins in `SECKILL_CORS_ORIGINS`: a listed
//! origin gets the usual headers (preflight answered here, before any
//! route or auth); any other origin gets no CORS header at all, so a
//! browser keeps its pages from reading the API.

use std::time::Duration;

use axum::{
    http::{header, HeaderName, HeaderValue, Method},
    response::Response,
};
use tower::{
    layer::util::{Identity, Stack},
    util::MapResponseLayer,
    ServiceBuilder,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

pub type Cors = Stack<CorsLayer, Stack<MapResponseLayer<fn(Response) -> Response>, Identity>>;

/// The CORS layer, or `None` when no origin is configured.
pub fn layer(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).expect("origins are validated by config"))
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            super::REQUEST_ID,
        ])
        .expose_headers([super::REQUEST_ID, header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE);
    Some(
        ServiceBuilder::new()
            .map_response(only_for_listed_origins as fn(Response) -> Response)
            .layer(cors)
            .into_inner(),
    )
}

/// tower-http answers an unlisted origin's preflight with the allowed
/// methods and headers, only without `Access-Control-Allow-Origin`: drop
/// those too, so nothing about the API is told to a foreign page.
fn only_for_listed_origins(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}
