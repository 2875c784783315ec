//! What a purchase answer means: every HTTP answer (or its absence) becomes
//! one [`Outcome`] of the contract (SPEC §3), or is marked unexpected.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

/// What one purchase request came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    Accepted,
    SoldOut,
    LimitExceeded,
    NotActive,
    InProgress,
    RateLimited,
    Unavailable,
    OtherRejected,
    ServerError,
    Timeout,
    TransportError,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 11] = [
        Outcome::Accepted,
        Outcome::SoldOut,
        Outcome::LimitExceeded,
        Outcome::NotActive,
        Outcome::InProgress,
        Outcome::RateLimited,
        Outcome::Unavailable,
        Outcome::OtherRejected,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::TransportError,
    ];

    /// The name in the report and its JSON.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::SoldOut => "sold_out",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::NotActive => "not_active",
            Outcome::InProgress => "in_progress",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
            Outcome::OtherRejected => "other_4xx",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::TransportError => "transport_error",
        }
    }

    /// Position in [`Outcome::ALL`], for counting in arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The client cannot know whether such a request left an order: the
    /// engine may have recorded it before the answer was lost or failed.
    pub fn is_ambiguous(self) -> bool {
        matches!(
            self,
            Outcome::Unavailable
                | Outcome::ServerError
                | Outcome::Timeout
                | Outcome::TransportError
        )
    }

    /// An error for the `errors` threshold: the engine failed to answer
    /// (5xx, 503 included, a timeout, a transport error). A 409 or a 429 is
    /// an answer of the contract, and any other 4xx fails the answers check.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::ServerError
                | Outcome::Unavailable
                | Outcome::Timeout
                | Outcome::TransportError
        )
    }

    /// The request reached the sale logic and got a verdict on the stock.
    pub fn reached_sale(self) -> bool {
        matches!(
            self,
            Outcome::Accepted | Outcome::SoldOut | Outcome::LimitExceeded
        )
    }
}

/// One classified purchase answer.
#[derive(Debug, Clone)]
pub struct PurchaseResult {
    pub outcome: Outcome,
    pub latency: Duration,
    pub order_no: Option<Uuid>,
    /// `"<status> <error code>"` for answers that are not one of the
    /// expected outcomes, to show in the report.
    pub unexpected: Option<String>,
}

#[derive(Deserialize)]
struct Accepted {
    order_no: Uuid,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
}

/// The `error` code of an error body; empty when the body has none.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default()
}

/// An answer's outcome, its order number, and why it was unexpected.
pub(super) type Classified = (Outcome, Option<Uuid>, Option<String>);

/// A request that got no answer.
pub(super) fn transport(err: &reqwest::Error) -> Classified {
    if err.is_timeout() {
        (Outcome::Timeout, None, None)
    } else {
        (
            Outcome::TransportError,
            None,
            Some(format!("transport: {err}")),
        )
    }
}

/// An answer by its status and error code.
pub(super) fn classify(status: StatusCode, body: &[u8]) -> Classified {
    let code = || error_code(body);
    match status {
        StatusCode::ACCEPTED => match serde_json::from_slice::<Accepted>(body) {
            Ok(a) => (Outcome::Accepted, Some(a.order_no), None),
            // A 202 without an order number is a broken contract, not a sale.
            Err(_) => (
                Outcome::ServerError,
                None,
                Some("202 without order_no".into()),
            ),
        },
        StatusCode::CONFLICT => {
            let code = code();
            match code.as_str() {
                "sold_out" => (Outcome::SoldOut, None, None),
                "limit_exceeded" => (Outcome::LimitExceeded, None, None),
                "not_active" => (Outcome::NotActive, None, None),
                "in_progress" => (Outcome::InProgress, None, None),
                _ => (Outcome::OtherRejected, None, Some(format!("409 {code}"))),
            }
        }
        StatusCode::TOO_MANY_REQUESTS => (Outcome::RateLimited, None, None),
        StatusCode::SERVICE_UNAVAILABLE => (Outcome::Unavailable, None, None),
        s if s.is_server_error() => (
            Outcome::ServerError,
            None,
            Some(format!("{} {}", s.as_u16(), code())),
        ),
        s => (
            Outcome::OtherRejected,
            None,
            Some(format!("{} {}", s.as_u16(), code())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_contract() {
        let no = Uuid::new_v4();
        let body = format!(r#"{{"order_no":"{no}","status":"pending"}}"#);
        assert_eq!(
            classify(StatusCode::ACCEPTED, body.as_bytes()),
            (Outcome::Accepted, Some(no), None)
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, br#"{"error":"sold_out"}"#).0,
            Outcome::SoldOut
        );
        assert_eq!(
            classify(
                StatusCode::CONFLICT,
                br#"{"error":"limit_exceeded","order_nos":[]}"#
            )
            .0,
            Outcome::LimitExceeded
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"{}").0,
            Outcome::RateLimited
        );
        let (outcome, _, why) = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"invalid_request"}"#,
        );
        assert_eq!(outcome, Outcome::OtherRejected);
        assert_eq!(why.as_deref(), Some("422 invalid_request"));
        assert_eq!(
            classify(StatusCode::ACCEPTED, b"{}").0,
            Outcome::ServerError
        );
    }
}
