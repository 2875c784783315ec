//! Extractors that turn every rejection into the API's JSON error body.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderValue, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{auth, error::ApiError, state::AppState};

/// `Json<T>` whose rejections are `ApiError`s. Only a JSON object is a
/// request body: serde would otherwise read `[1]` as a struct's fields.
/// Parsed once, straight from the body bytes.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge)
            }
            Err(err) if caused_by::<tower_http::timeout::TimeoutError>(&err) => {
                return Err(ApiError::RequestTimeout)
            }
            Err(err) => return Err(ApiError::invalid(err.body_text())),
        };
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(b'[' | b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
                // Well-formed or not, it is not an object: say which when we can.
                return Err(
                    match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                        Ok(_) => ApiError::unprocessable("the request body must be a JSON object"),
                        Err(err) => ApiError::invalid(format!("malformed JSON: {err}")),
                    },
                );
            }
            _ => return Err(ApiError::invalid("malformed JSON: expected an object")),
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|err| match err.classify() {
                serde_json::error::Category::Data => {
                    ApiError::unprocessable(format!("invalid request body: {err}"))
                }
                _ => ApiError::invalid(format!("malformed JSON: {err}")),
            })
    }
}

/// Whether `E` is anywhere in the error's chain of causes.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `Query<T>` whose rejections are `ApiError`s (400 `invalid_request`).
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(err) => Err(ApiError::invalid(format!(
                "invalid query string: {}",
                err.body_text()
            ))),
        }
    }
}

/// A path segment as text (`{order_no}`), or 400 when it does not decode.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(raw)| Self(raw))
            .map_err(|_| ApiError::invalid("malformed path"))
    }
}

/// A positive 64-bit id from the path (`{id}`, `{user_id}`).
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => match raw.parse::<i64>() {
                Ok(id) if id > 0 => Ok(Self(id)),
                _ => Err(ApiError::invalid(
                    "id must be an integer in 1..=9223372036854775807",
                )),
            },
            Err(_) => Err(ApiError::invalid("malformed path")),
        }
    }
}

/// The `If-None-Match` request header, if any: read from the request
/// without copying its other headers (the event page's crowd sends it).
pub struct IfNoneMatch(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(header::IF_NONE_MATCH).cloned()))
    }
}

/// The `Authorization: Bearer` token, or 401.
pub(super) fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth::bearer(header).map_err(|_| ApiError::Unauthorized)
}

/// An authenticated shopper; also spends the shopper's rate-limit budget.
pub struct Shopper(pub i64);

impl FromRequestParts<AppState> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        let user_id = state
            .auth
            .shopper(token)
            .map_err(|_| ApiError::Unauthorized)?;
        tracing::Span::current().record("user_id", user_id);
        state
            .limits
            .check_user(user_id)
            .map_err(|l| ApiError::RateLimited {
                retry_after: l.retry_after,
            })?;
        Ok(Self(user_id))
    }
}

/// An operator (the admin bearer token). A valid shopper token here is 403.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        if state.auth.is_admin(token) {
            Ok(Self)
        } else if state.auth.shopper(token).is_ok() {
            Err(ApiError::Forbidden)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// The client's address: the TCP peer, or behind a trusted balancer the
/// client it names (`SECKILL_TRUSTED_PROXIES`, see [`crate::forwarded`]).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let proxies = &state.settings.trusted_proxies;
        Ok(Self(if proxies.is_empty() {
            peer
        } else {
            proxies.client(peer, &parts.headers)
        }))
    }
}
