//! `POST /api/events/{id}/purchase`: the hot path.
//!
//! Gates, cheapest first: global limit → per-IP limit → path → token →
//! per-shopper limit → event (cached) → body → idempotency claim → local
//! sold-out flag → `purchase.lua` → hand-off to the writers → 202.
//!
//! A 202 is only ever sent after Redis recorded the intent (and, under
//! `SECKILL_ACK=durable`, after Postgres committed the order). A keyed retry
//! that resumes an unanswered attempt skips the local flag and asks Redis,
//! so it gets the answer that matches what will be persisted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{OnceLock, RwLock},
    time::Instant,
};

use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{AppJson, ClientIp, Id, Shopper};
use crate::{
    catalog::EventSlot,
    config::AckMode,
    db,
    error::ApiError,
    idempotency::{self, Claim, IdempotencyStore, StoreError, StoredResponse},
    intent::{from_millis, Intent},
    redis::PurchaseOutcome,
    state::AppState,
    writer::{persist, Settled},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    quantity: i64,
}

pub async fn purchase(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    request: Request,
) -> Response {
    let started = Instant::now();
    let answer = match gate_and_buy(&app, ip, request).await {
        Ok(answer) => answer,
        Err(err) => Answer::Failed(err),
    };
    PurchaseMetrics::get().record(answer.label(), started.elapsed());
    answer.into_response()
}

/// What the shopper is told (a 202 body).
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub order_no: Uuid,
    pub event_id: i64,
    pub quantity: i32,
    pub amount: i64,
    /// `pending` (acknowledged from the Redis ledger), or under durable
    /// acknowledgement `confirmed` / `failed`.
    pub status: &'static str,
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
    /// The same Idempotency-Key is being answered right now.
    InProgress,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::NotActive(_) => "not_active",
            Self::InProgress => "in_progress",
        }
    }

    fn to_error(&self) -> ApiError {
        match self {
            Self::SoldOut => ApiError::conflict("sold_out", "sold out"),
            Self::LimitExceeded { limit, held } => {
                let mut err = ApiError::conflict(
                    "limit_exceeded",
                    format!("at most {limit} per shopper for this sale"),
                );
                if let ApiError::Conflict { extra, .. } = &mut err {
                    extra.insert("order_nos".into(), serde_json::json!(held));
                }
                err
            }
            Self::NotActive(why) => ApiError::conflict("not_active", *why),
            Self::InProgress => ApiError::conflict(
                "in_progress",
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
    fn stored(&self) -> Option<StoredResponse> {
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
            Self::Refused(refusal) => refusal.to_error().into_response(),
            Self::Failed(err) => err.into_response(),
        }
    }
}

/// Metric handles registered once per label: the hot path then only adds to
/// atomics instead of looking the series up in the registry per request.
struct PurchaseMetrics {
    outcomes: RwLock<HashMap<&'static str, metrics::Counter>>,
    latency: metrics::Histogram,
}

impl PurchaseMetrics {
    fn get() -> &'static Self {
        static METRICS: OnceLock<PurchaseMetrics> = OnceLock::new();
        METRICS.get_or_init(|| Self {
            outcomes: RwLock::default(),
            latency: metrics::histogram!("seckill_purchase_seconds"),
        })
    }

    fn record(&self, outcome: &'static str, took: std::time::Duration) {
        let known = self
            .outcomes
            .read()
            .expect("metrics lock")
            .get(outcome)
            .cloned();
        let counter = known.unwrap_or_else(|| {
            let counter = metrics::counter!("seckill_purchases_total", "outcome" => outcome);
            self.outcomes
                .write()
                .expect("metrics lock")
                .insert(outcome, counter.clone());
            counter
        });
        counter.increment(1);
        self.latency.record(took.as_secs_f64());
    }
}

async fn gate_and_buy(app: &AppState, ip: IpAddr, request: Request) -> Result<Answer, ApiError> {
    let limited = |l: crate::ratelimit::Limited| ApiError::RateLimited {
        retry_after: l.retry_after,
    };
    app.limits.check_global().map_err(limited)?;
    app.limits.check_ip(ip).map_err(limited)?;
    let (mut parts, body) = request.into_parts();
    let Id(event_id) = Id::from_request_parts(&mut parts, app).await?;
    tracing::Span::current().record("event_id", event_id);
    let Shopper(user_id) = Shopper::from_request_parts(&mut parts, app).await?;
    let slot = app
        .catalog
        .get(&app.db, event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let key = idempotency_key(&parts.headers)?.map(str::to_owned);
    let AppJson(body) =
        AppJson::<PurchaseBody>::from_request(Request::from_parts(parts, body), app).await?;
    let limit = slot.event.per_user_limit;
    let quantity = match i32::try_from(body.quantity) {
        Ok(q) if (1..=limit).contains(&q) => q,
        _ => {
            return Err(ApiError::unprocessable(format!(
                "quantity must be an integer in 1..={limit}"
            )))
        }
    };
    match key {
        None => match take_stock(app, &slot, user_id, quantity, Uuid::now_v7(), false).await? {
            Taken::Bought { intent, replay } => Ok(Answer::Accepted {
                receipt: hand_off(app, intent).await?,
                replay,
            }),
            Taken::Refused(refusal) => Ok(Answer::Refused(refusal)),
        },
        Some(key) => keyed(app, &slot, user_id, quantity, &key).await,
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(raw) if idempotency::valid_key(raw.as_bytes()) => Ok(raw.to_str().ok()),
        Some(_) => Err(ApiError::invalid(
            "Idempotency-Key must be 1..=255 printable ASCII characters",
        )),
    }
}

/// What `purchase.lua` decided for one attempt.
enum Taken {
    /// Stock taken (or taken before under this order_no): the intent to persist.
    Bought {
        intent: Intent,
        replay: bool,
    },
    Refused(Refusal),
}

/// One attempt at the stock under `order_no`. `resumed`: an earlier attempt
/// with this order_no may have bought, so local shortcuts are not trusted.
async fn take_stock(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
    resumed: bool,
) -> Result<Taken, ApiError> {
    // The local flag spares Redis the crowd that arrives after sell-out.
    if !resumed && slot.is_sold_out() {
        return Ok(Taken::Refused(if slot.has_ended() {
            Refusal::NotActive("the sale has ended")
        } else {
            Refusal::SoldOut
        }));
    }
    let event_id = slot.event.id;
    let outcome = app
        .redis
        .purchase(event_id, user_id, quantity, order_no)
        .await?;
    Ok(Taken::Refused(match outcome {
        PurchaseOutcome::Accepted {
            amount,
            accepted_ms,
            replay,
        } => {
            let accepted_at = from_millis(accepted_ms);
            let intent = Intent {
                order_no,
                event_id,
                user_id,
                quantity,
                amount,
                accepted_at,
            };
            return Ok(Taken::Bought { intent, replay });
        }
        PurchaseOutcome::SoldOut { stock_left } => {
            if stock_left <= 0 {
                slot.mark_sold_out();
            }
            Refusal::SoldOut
        }
        PurchaseOutcome::LimitExceeded { held } => Refusal::LimitExceeded {
            limit: slot.event.per_user_limit,
            held,
        },
        PurchaseOutcome::NotStarted => Refusal::NotActive("the sale has not started"),
        PurchaseOutcome::Ended => Refusal::NotActive("the sale has ended"),
        PurchaseOutcome::NotPreheated if resumed && ever_loaded(app, event_id).await? => {
            // Redis lost the event and the reconciler has not rebuilt it yet:
            // whether the earlier attempt bought is not known here. Retry later.
            return Err(ApiError::Unavailable(
                "the sale is being restored after a Redis loss".into(),
            ));
        }
        PurchaseOutcome::NotPreheated => Refusal::NotActive("the sale is not open yet"),
    }))
}

/// Whether the event was ever loaded into Redis (read fresh: the cached copy
/// may predate the preheat).
async fn ever_loaded(app: &AppState, event_id: i64) -> Result<bool, ApiError> {
    Ok(db::events::get(&app.db, event_id)
        .await?
        .is_some_and(|e| e.preheated_at.is_some()))
}

/// Gives an accepted intent to the writers and says what to answer.
async fn hand_off(app: &AppState, intent: Intent) -> Result<Receipt, ApiError> {
    let mut receipt = receipt_of(&intent);
    match app.settings.ack {
        AckMode::Ledger => {
            // Durable in the ledger already; a full channel only delays persistence.
            app.writers.offer(intent);
        }
        AckMode::Durable => match app
            .writers
            .persist_and_wait(intent, app.settings.ack_timeout)
            .await
        {
            Some(Settled::Confirmed) => receipt.status = "confirmed",
            Some(Settled::Failed(reason)) => {
                receipt.status = "failed";
                receipt.failure_reason = Some(reason);
            }
            None => {
                return Err(ApiError::Unavailable(
                    "accepted but not yet committed; retry with the same Idempotency-Key".into(),
                ))
            }
        },
    }
    Ok(receipt)
}

/// A purchase under an Idempotency-Key (see [`crate::idempotency`]).
async fn keyed(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    key: &str,
) -> Result<Answer, ApiError> {
    let store = IdempotencyStore::new(
        &app.redis,
        &app.db,
        user_id,
        key,
        slot.event.id,
        quantity,
        slot.event.ends_at + idempotency::RETENTION,
    );
    let (order_no, resumed) = match store.claim().await? {
        Claim::New(order_no) => (order_no, false),
        Claim::Resume(order_no) => (order_no, true),
        Claim::Replay(stored) => return Ok(Answer::Replayed(stored)),
        Claim::InProgress => return Ok(Answer::Refused(Refusal::InProgress)),
        Claim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
    };
    let answer = match keyed_attempt(app, slot, &store, user_id, quantity, order_no, resumed).await
    {
        Ok(answer) => answer,
        Err(err) => {
            // No answer was given: a retry resumes this attempt with the same order_no.
            let _ = store.abandon(order_no).await;
            return Err(err);
        }
    };
    if let Some(stored) = answer.stored() {
        if let Err(err) = store.complete(order_no, &stored).await {
            // The answer stands (a 202 is durable in Postgres already); until
            // the record is written a retry waits, then resumes this order_no.
            tracing::warn!(error = %err, "idempotency record not completed");
        }
    }
    Ok(answer)
}

async fn keyed_attempt(
    app: &AppState,
    slot: &EventSlot,
    store: &IdempotencyStore<'_>,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
    resumed: bool,
) -> Result<Answer, ApiError> {
    match take_stock(app, slot, user_id, quantity, order_no, resumed).await? {
        Taken::Bought { intent, replay } => {
            match store.record_accepted(order_no).await {
                Ok(()) => {}
                Err(StoreError::Taken(winner)) => {
                    // Across a Redis loss two attempts under one key both
                    // bought: the first recorded keeps it, ours is undone.
                    app.redis.release(slot.event.id, &[order_no]).await?;
                    return Ok(Answer::Accepted {
                        receipt: Receipt {
                            order_no: winner,
                            ..receipt_of(&intent)
                        },
                        replay: true,
                    });
                }
                Err(err) => {
                    // Accepted in Redis but the key is not durable yet: persist
                    // the order anyway; the client retries and resumes it.
                    app.writers.offer(intent);
                    return Err(err.into());
                }
            }
            Ok(Answer::Accepted {
                receipt: hand_off(app, intent).await?,
                replay,
            })
        }
        Taken::Refused(refusal) if resumed => {
            settle_unanswered(app, slot, store, user_id, quantity, order_no, refusal).await
        }
        Taken::Refused(refusal) => Ok(Answer::Refused(refusal)),
    }
}

/// A resumed attempt that Redis now refuses. Either the earlier attempt never
/// bought, or a Redis that since lost its state accepted it (and a copy may
/// still be queued in some engine). Postgres decides, once: the order is
/// written as failed unless it is there already, so no later copy can
/// confirm it, and the answer matches what is persisted.
async fn settle_unanswered(
    app: &AppState,
    slot: &EventSlot,
    store: &IdempotencyStore<'_>,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
    refusal: Refusal,
) -> Result<Answer, ApiError> {
    let accepted = store.was_accepted(order_no).await?;
    let amount = slot.event.price * quantity as i64;
    let order = db::orders::FailedOrder {
        order_no,
        event_id: slot.event.id,
        user_id,
        quantity,
        amount,
        // Acknowledged once (the key is durable): its stock went with Redis.
        reason: if accepted {
            persist::STOCK_LOST
        } else {
            persist::NOT_ACCEPTED
        },
    };
    let voided = db::orders::insert_failed_unless_present(&app.db, &order).await?;
    if voided && !accepted {
        return Ok(Answer::Refused(refusal));
    }
    // It was accepted once: the same 202 as then.
    let intent = Intent {
        order_no,
        event_id: slot.event.id,
        user_id,
        quantity,
        amount,
        accepted_at: Utc::now(),
    };
    let mut receipt = receipt_of(&intent);
    if app.settings.ack == AckMode::Durable {
        let persisted = db::orders::get(&app.db, order_no).await?;
        if let Some(order) = persisted {
            receipt.status = if order.status == "confirmed" {
                "confirmed"
            } else {
                "failed"
            };
            receipt.failure_reason = order.failure_reason;
        }
    }
    Ok(Answer::Accepted {
        receipt,
        replay: true,
    })
}

fn receipt_of(intent: &Intent) -> Receipt {
    Receipt {
        order_no: intent.order_no,
        event_id: intent.event_id,
        quantity: intent.quantity,
        amount: intent.amount,
        status: "pending",
        failure_reason: None,
    }
}
