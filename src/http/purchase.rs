//! `POST /api/events/{id}/purchase`: the hot path.
//!
//! rate limits → token → event (cached) → body → local sold-out flag →
//! idempotency claim → `purchase.lua` → 202 and a hand-off to the writers.
//! A 202 is only ever sent after Redis recorded the intent.

use std::{collections::HashMap, sync::OnceLock, time::Instant};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::extract::{AppJson, ClientIp, Id, Shopper};
use crate::{
    catalog::EventSlot,
    error::ApiError,
    idempotency::{self, Claim, IdempotencyStore, StoredResponse},
    redis::PurchaseOutcome,
    state::AppState,
    writer::Intent,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    quantity: i64,
}

/// Keep idempotency records until the event ends plus this long.
const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;

pub async fn purchase(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Id(event_id): Id,
    Shopper(user_id): Shopper,
    headers: HeaderMap,
    AppJson(body): AppJson<PurchaseBody>,
) -> Response {
    let started = Instant::now();
    tracing::Span::current().record("event_id", event_id);
    let result = attempt(&app, ip, event_id, user_id, &headers, body).await;
    let (outcome, response) = match result {
        Ok((outcome, status, body)) => (outcome, (status, Json(body)).into_response()),
        Err(err) => (error_kind(&err), err.into_response()),
    };
    PurchaseMetrics::get().record(outcome, started.elapsed());
    response
}

/// Metric handles registered once: the hot path then only adds to atomics
/// instead of looking the series up in the registry per request.
struct PurchaseMetrics {
    outcomes: HashMap<&'static str, metrics::Counter>,
    latency: metrics::Histogram,
}

const OUTCOMES: [&str; 13] = [
    "accepted",
    "accepted_replay",
    "replayed",
    "sold_out",
    "limit_exceeded",
    "not_active",
    "in_progress",
    "rate_limited",
    "not_found",
    "invalid",
    "idempotency_key_reused",
    "unavailable",
    "error",
];

impl PurchaseMetrics {
    fn get() -> &'static Self {
        static METRICS: OnceLock<PurchaseMetrics> = OnceLock::new();
        METRICS.get_or_init(|| Self {
            outcomes: OUTCOMES
                .iter()
                .map(|o| {
                    (
                        *o,
                        metrics::counter!("seckill_purchases_total", "outcome" => *o),
                    )
                })
                .collect(),
            latency: metrics::histogram!("seckill_purchase_seconds"),
        })
    }

    fn record(&self, outcome: &'static str, took: std::time::Duration) {
        match self.outcomes.get(outcome) {
            Some(counter) => counter.increment(1),
            None => metrics::counter!("seckill_purchases_total", "outcome" => outcome).increment(1),
        }
        self.latency.record(took.as_secs_f64());
    }
}

fn error_kind(err: &ApiError) -> &'static str {
    match err {
        ApiError::Conflict { code, .. } => code,
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::NotFound(_) => "not_found",
        ApiError::Invalid { .. } | ApiError::PayloadTooLarge | ApiError::UnsupportedMediaType => {
            "invalid"
        }
        ApiError::IdempotencyKeyReused => "idempotency_key_reused",
        ApiError::Unavailable(_) => "unavailable",
        _ => "error",
    }
}

type Answer = (&'static str, StatusCode, Value);

async fn attempt(
    app: &AppState,
    ip: std::net::IpAddr,
    event_id: i64,
    user_id: i64,
    headers: &HeaderMap,
    body: PurchaseBody,
) -> Result<Answer, ApiError> {
    app.limits
        .check_global()
        .map_err(|l| ApiError::RateLimited {
            retry_after: l.retry_after,
        })?;
    app.limits.check_ip(ip).map_err(|l| ApiError::RateLimited {
        retry_after: l.retry_after,
    })?;

    let slot = app
        .catalog
        .get(&app.db, event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let limit = slot.event.per_user_limit;
    let quantity = match i32::try_from(body.quantity) {
        Ok(q) if (1..=limit).contains(&q) => q,
        _ => {
            return Err(ApiError::unprocessable(format!(
                "quantity must be an integer in 1..={limit}"
            )))
        }
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(raw) if idempotency::valid_key(raw.as_bytes()) => {
            Some(raw.to_str().expect("printable ASCII is valid str"))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1..=255 printable ASCII characters",
            ))
        }
    };

    let Some(key) = key else {
        return buy(app, &slot, user_id, quantity, Uuid::now_v7()).await;
    };
    let ttl_ms = slot.ends_ms() + IDEMPOTENCY_RETENTION_MS - Utc::now().timestamp_millis();
    let store = IdempotencyStore::new(
        &app.redis,
        user_id,
        key,
        format!("{event_id}:{quantity}"),
        ttl_ms,
    );
    let order_no = match store.claim().await? {
        Claim::Proceed(order_no) => order_no,
        Claim::Replay(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
            return Ok(("replayed", status, stored.body));
        }
        Claim::InProgress => {
            return Err(ApiError::conflict(
                "in_progress",
                "a request with this Idempotency-Key is still in progress",
            ))
        }
        Claim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
    };
    match buy(app, &slot, user_id, quantity, order_no).await {
        Ok(answer) => {
            store
                .complete(
                    order_no,
                    StoredResponse {
                        status: answer.1.as_u16(),
                        body: answer.2.clone(),
                    },
                )
                .await?;
            Ok(answer)
        }
        Err(err @ ApiError::Conflict { .. }) => {
            store
                .complete(
                    order_no,
                    StoredResponse {
                        status: err.status().as_u16(),
                        body: err.body(),
                    },
                )
                .await?;
            Err(err)
        }
        Err(err) => {
            // No answer was given: a retry resumes this attempt with the same order_no.
            let _ = store.abandon(order_no).await;
            Err(err)
        }
    }
}

/// Runs the purchase script and turns its outcome into the answer.
async fn buy(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
) -> Result<Answer, ApiError> {
    // The local flag spares Redis the crowd that arrives after sell-out. It
    // is checked after an idempotency claim, so a replay still gets its 202.
    if slot.is_sold_out() {
        return Err(if slot.has_ended() {
            not_active("the sale has ended")
        } else {
            sold_out()
        });
    }
    let event_id = slot.event.id;
    match app
        .redis
        .purchase(event_id, user_id, quantity, order_no)
        .await?
    {
        PurchaseOutcome::Accepted {
            amount,
            accepted_ms,
            replay,
        } => {
            let accepted_at = Utc
                .timestamp_millis_opt(accepted_ms)
                .single()
                .filter(|_| accepted_ms > 0)
                .unwrap_or_else(Utc::now);
            let intent = Intent {
                order_no,
                event_id,
                user_id,
                quantity,
                amount,
                accepted_at,
            };
            // Durable in the ledger already; a full channel only delays persistence.
            app.writers.offer(intent);
            let body = json!({"order_no": order_no, "event_id": event_id, "quantity": quantity, "amount": amount, "status": "pending"});
            Ok((
                if replay {
                    "accepted_replay"
                } else {
                    "accepted"
                },
                StatusCode::ACCEPTED,
                body,
            ))
        }
        PurchaseOutcome::SoldOut { stock_left } => {
            if stock_left <= 0 {
                slot.mark_sold_out();
            }
            Err(sold_out())
        }
        PurchaseOutcome::LimitExceeded { order_nos } => {
            let held: Vec<Uuid> = crate::redis::parse_order_list(&order_nos)
                .into_iter()
                .filter(|(_, failed)| !failed)
                .map(|(o, _)| o)
                .collect();
            let mut err = ApiError::conflict(
                "limit_exceeded",
                format!(
                    "at most {} per shopper for this sale",
                    slot.event.per_user_limit
                ),
            );
            if let ApiError::Conflict { extra, .. } = &mut err {
                extra.insert("order_nos".into(), json!(held));
            }
            Err(err)
        }
        PurchaseOutcome::NotStarted => Err(not_active("the sale has not started")),
        PurchaseOutcome::Ended => Err(not_active("the sale has ended")),
        PurchaseOutcome::NotPreheated => Err(not_active("the sale is not open yet")),
    }
}

fn sold_out() -> ApiError {
    ApiError::conflict("sold_out", "sold out")
}

fn not_active(message: &str) -> ApiError {
    ApiError::conflict("not_active", message)
}
