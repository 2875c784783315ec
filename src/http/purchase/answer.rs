//! Every way a purchase request ends, as a type: the 202 receipt, a
//! business refusal (409), an idempotent replay, or an error. Each answer
//! names its metric label and renders itself (`IntoResponse`).

use std::sync::{LazyLock, OnceLock};

use axum::{
    body::Bytes,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    error::{ApiError, ErrorCode},
    idempotency::StoredResponse,
    intent::{Intent, OrderStatus},
};

/// What the shopper is told (a 202 body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    pub order_no: Uuid,
    pub event_id: i64,
    pub quantity: i32,
    pub amount: i64,
    /// `pending` (acknowledged from the Redis ledger), or under durable
    /// acknowledgement `confirmed` / `failed`.
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// A business refusal: 409.
#[derive(Debug)]
pub enum Refusal {
    SoldOut,
    /// The shopper's non-failed orders for the sale.
    LimitExceeded {
        limit: i32,
        held: Vec<Uuid>,
    },
    NotActive(&'static str),
    /// An operator paused the sale (`POST /admin/events/{id}/pause`).
    Paused,
    /// The same Idempotency-Key is being answered right now.
    InProgress,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::NotActive(_) => "not_active",
            Self::Paused => "paused",
            Self::InProgress => "in_progress",
        }
    }

    fn to_error(&self) -> ApiError {
        match self {
            Self::SoldOut => ApiError::conflict(ErrorCode::SoldOut, "sold out"),
            Self::LimitExceeded { limit, held } => {
                let mut err = ApiError::conflict(
                    ErrorCode::LimitExceeded,
                    format!("at most {limit} per shopper for this sale"),
                );
                if let ApiError::Conflict { extra, .. } = &mut err {
                    extra.insert("order_nos".into(), serde_json::json!(held));
                }
                err
            }
            Self::NotActive(why) => ApiError::conflict(ErrorCode::NotActive, *why),
            Self::Paused => ApiError::conflict(
                ErrorCode::SalePaused,
                "the sale is paused by the operator; try again later",
            ),
            Self::InProgress => ApiError::conflict(
                ErrorCode::InProgress,
                "a request with this Idempotency-Key is still in progress",
            ),
        }
    }
}

/// Every way a purchase request ends; names its own metric label.
#[derive(Debug)]
pub enum Answer {
    /// 202; with `replay` when this order_no had been accepted before (a
    /// re-sent or resumed attempt) and nothing was taken twice.
    Accepted {
        receipt: Receipt,
        replay: bool,
    },
    /// An idempotent replay of an earlier answer, byte for byte.
    Replayed(StoredResponse),
    Refused(Refusal),
    Failed(ApiError),
}

impl Answer {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { replay: false, .. } => "accepted",
            Self::Accepted { replay: true, .. } => "accepted_replay",
            Self::Replayed(_) => "replayed",
            Self::Refused(refusal) => refusal.label(),
            Self::Failed(err) => match err {
                ApiError::RateLimited { .. } => "rate_limited",
                ApiError::NotFound(_) => "not_found",
                ApiError::Invalid { .. }
                | ApiError::PayloadTooLarge
                | ApiError::UnsupportedMediaType => "invalid",
                ApiError::Unauthorized | ApiError::Forbidden => "unauthorized",
                ApiError::IdempotencyKeyReused => "idempotency_key_reused",
                ApiError::Unavailable(_) => "unavailable",
                _ => "error",
            },
        }
    }

    /// What an Idempotency-Key replays later.
    pub(super) fn stored(&self) -> Option<StoredResponse> {
        match self {
            Self::Accepted { receipt, .. } => Some(StoredResponse {
                status: StatusCode::ACCEPTED.as_u16(),
                body: serde_json::to_string(receipt).expect("a receipt serializes"),
            }),
            Self::Refused(refusal) => Some(StoredResponse {
                status: StatusCode::CONFLICT.as_u16(),
                body: refusal.to_error().body().to_string(),
            }),
            Self::Replayed(_) | Self::Failed(_) => None,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Self::Accepted { receipt, .. } => (StatusCode::ACCEPTED, Json(receipt)).into_response(),
            Self::Replayed(stored) => (
                StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED),
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                stored.body,
            )
                .into_response(),
            // The flood after sell-out gets bytes written once, not a body serialized per request.
            Self::Refused(Refusal::SoldOut) => (
                StatusCode::CONFLICT,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                SOLD_OUT_BODY.clone(),
            )
                .into_response(),
            Self::Refused(refusal) => refusal.to_error().into_response(),
            Self::Failed(err) => err.into_response(),
        }
    }
}

/// `Refusal::SoldOut`'s error body, rendered once from its `ApiError`.
static SOLD_OUT_BODY: LazyLock<Bytes> =
    LazyLock::new(|| Refusal::SoldOut.to_error().body().to_string().into());

/// Every outcome label [`Answer::label`] gives, most frequent first: the hot
/// path finds its counter by a short scan (the flood after sell-out pays no
/// lock and no hash per request). A series is registered on its first use.
const OUTCOMES: [&str; 15] = [
    "sold_out",
    "accepted",
    "rate_limited",
    "limit_exceeded",
    "not_active",
    "paused",
    "in_progress",
    "accepted_replay",
    "replayed",
    "not_found",
    "invalid",
    "unauthorized",
    "idempotency_key_reused",
    "unavailable",
    "error",
];

/// Metric handles registered once per label: the hot path then only adds to
/// atomics instead of looking the series up in the registry per request.
pub(super) struct PurchaseMetrics {
    /// The counter of `OUTCOMES[i]`, once registered.
    outcomes: [OnceLock<metrics::Counter>; OUTCOMES.len()],
    latency: metrics::Histogram,
}

impl PurchaseMetrics {
    pub(super) fn get() -> &'static Self {
        static METRICS: OnceLock<PurchaseMetrics> = OnceLock::new();
        METRICS.get_or_init(|| Self {
            outcomes: Default::default(),
            latency: metrics::histogram!("seckill_purchase_seconds"),
        })
    }

    pub(super) fn record(&self, outcome: &'static str, took: std::time::Duration) {
        let counter = |outcome| metrics::counter!("seckill_purchases_total", "outcome" => outcome);
        match OUTCOMES.iter().position(|&known| known == outcome) {
            Some(i) => self.outcomes[i]
                .get_or_init(|| counter(outcome))
                .increment(1),
            // A label missing from OUTCOMES still counts (a registry lookup).
            None => counter(outcome).increment(1),
        }
        self.latency.record(took.as_secs_f64());
    }
}

/// The receipt of an accepted intent, as acknowledged from the ledger.
pub(super) fn receipt_of(intent: &Intent) -> Receipt {
    Receipt {
        order_no: intent.order_no,
        event_id: intent.event_id,
        quantity: intent.quantity,
        amount: intent.amount,
        status: OrderStatus::Pending,
        failure_reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pre_rendered_sold_out_body_is_the_error_body() {
        let response = Answer::Refused(Refusal::SoldOut).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent, Refusal::SoldOut.to_error().body());
    }

    #[test]
    fn every_label_is_registered_up_front() {
        let receipt = Receipt {
            order_no: Uuid::nil(),
            event_id: 1,
            quantity: 1,
            amount: 1,
            status: OrderStatus::Pending,
            failure_reason: None,
        };
        let stored = StoredResponse {
            status: 202,
            body: String::new(),
        };
        let answers = [
            Answer::Accepted {
                receipt: receipt.clone(),
                replay: false,
            },
            Answer::Accepted {
                receipt,
                replay: true,
            },
            Answer::Replayed(stored),
            Answer::Refused(Refusal::SoldOut),
            Answer::Refused(Refusal::LimitExceeded {
                limit: 1,
                held: vec![],
            }),
            Answer::Refused(Refusal::NotActive("ended")),
            Answer::Refused(Refusal::Paused),
            Answer::Refused(Refusal::InProgress),
            Answer::Failed(ApiError::RateLimited {
                retry_after: std::time::Duration::ZERO,
            }),
            Answer::Failed(ApiError::NotFound("event")),
            Answer::Failed(ApiError::invalid("x")),
            Answer::Failed(ApiError::PayloadTooLarge),
            Answer::Failed(ApiError::UnsupportedMediaType),
            Answer::Failed(ApiError::Unauthorized),
            Answer::Failed(ApiError::Forbidden),
            Answer::Failed(ApiError::IdempotencyKeyReused),
            Answer::Failed(ApiError::Unavailable("down".into())),
            Answer::Failed(ApiError::RequestTimeout),
            Answer::Failed(ApiError::Internal("x".into())),
        ];
        for answer in &answers {
            assert!(
                OUTCOMES.contains(&answer.label()),
                "{} missing",
                answer.label()
            );
        }
    }
}
