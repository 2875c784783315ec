//! `POST /api/events/{id}/purchase`: the hot path.
//!
//! Gates, cheapest first: global limit → per-IP limit → path → event
//! (cached; once this process knows it is sold out, an unkeyed request is
//! answered 409 here) → token → per-shopper limit → body → idempotency
//! claim → local sold-out flag → `purchase.lua` → hand-off to the writers → 202.
//!
//! A 202 is only ever sent after Redis recorded the intent (and, under
//! `SECKILL_ACK=durable`, after Postgres committed the order). A keyed retry
//! that resumes an unanswered attempt skips the local flag and asks Redis,
//! so it gets the answer that matches what will be persisted.

mod ablation;
mod answer;
mod keyed;

use std::{net::IpAddr, time::Instant};

use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use answer::{receipt_of, PurchaseMetrics};
pub use answer::{Answer, Receipt, Refusal};

use super::extract::{AppJson, ClientIp, Id, Shopper};
use crate::{
    catalog::EventSlot,
    config::{AckMode, PurchaseLayers},
    db,
    error::{ApiError, ErrorBody},
    idempotency,
    intent::{from_millis, Intent, OrderStatus, Settled},
    loading,
    redis::{Bucket, PurchaseOutcome},
    state::AppState,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    /// Units to buy: 1..=the event's `per_user_limit` (422 otherwise).
    #[schema(minimum = 1)]
    quantity: i64,
}

#[cfg(test)]
mod tests {
    use super::plain_event_id;

    #[test]
    fn plain_event_ids_and_what_is_left_to_the_extractor() {
        assert_eq!(plain_event_id("/api/events/42/purchase"), Some(42));
        assert_eq!(
            plain_event_id("/api/events/9223372036854775807/purchase"),
            Some(i64::MAX)
        );
        for other in [
            "/api/events/0/purchase",
            "/api/events/9223372036854775808/purchase",
            "/api/events/%34%32/purchase",
            "/api/events/+42/purchase",
            "/api/events//purchase",
            "/api/events/4 2/purchase",
        ] {
            assert_eq!(plain_event_id(other), None, "{other}");
        }
    }
}

#[utoipa::path(
    post, path = "/api/events/{id}/purchase", operation_id = "purchase", tag = "shopper",
    security(("shopper_jwt" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..=255 printable ASCII characters, scoped per shopper: the same key and body \
                           get the same answer again, with one side effect"),
    ),
    request_body(content = PurchaseBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: recorded in Redis (under SECKILL_ACK=durable, committed)", body = Receipt,
            links(("ShowOrder" = (operation_id = "show_order", parameters(("order_no" = "$response.body#/order_no")))))),
        (status = 400, description = "`invalid_request`: malformed JSON, path or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was too slow, or a keyed purchase took too long", body = ErrorBody),
        (status = 409, description = "`sold_out`, `limit_exceeded` (with `order_nos`), `not_active` or `in_progress`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request` (quantity out of range, not an object, unknown field) or `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (global, per IP or per shopper)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable; never after an unrecorded purchase", body = ErrorBody),
    ),
)]
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
    app.crowd.answered();
    answer.into_response()
}

async fn gate_and_buy(app: &AppState, ip: IpAddr, request: Request) -> Result<Answer, ApiError> {
    let layers = app.settings.purchase_layers;
    let limited = |l: crate::ratelimit::Limited| ApiError::RateLimited {
        retry_after: l.retry_after,
    };
    if layers >= PurchaseLayers::Limits {
        app.limits.check_global().map_err(limited)?;
        app.limits.check_ip(ip).map_err(limited)?;
    }
    let (mut parts, body) = request.into_parts();
    let event_id = match plain_event_id(parts.uri.path()) {
        Some(id) => id,
        None => Id::from_request_parts(&mut parts, app).await?.0,
    };
    tracing::Span::current().record("event_id", event_id);
    // The slower steps (a Postgres lookup, the purchase itself) are boxed:
    // this future stays small, so the crowd answered from the cache below
    // does not pay for moving the whole purchase's state machine around.
    let slot = match app.catalog.cached(event_id) {
        Some(known) => known,
        None => Box::pin(app.catalog.get(&app.db, event_id)).await?,
    }
    .ok_or(ApiError::NotFound("event"))?;
    // Sold out here: every caller gets the same answer, so the crowd that
    // keeps clicking costs neither a token check nor a body parse. A keyed
    // request goes on: its key may hold an earlier 202 to replay.
    if slot.is_sold_out() && !parts.headers.contains_key(IDEMPOTENCY_KEY) {
        return Ok(Answer::Refused(sold_out_refusal(&slot)));
    }
    Box::pin(buy(app, slot, parts, body)).await
}

/// The gates past the cached event (token, per-shopper limit, body,
/// idempotency claim), then the purchase.
async fn buy(
    app: &AppState,
    slot: std::sync::Arc<EventSlot>,
    mut parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<Answer, ApiError> {
    let layers = app.settings.purchase_layers;
    let user_id = match layers {
        PurchaseLayers::Script => ablation::unverified_shopper(&parts)?,
        PurchaseLayers::Token => ablation::verified_shopper(&parts, app)?,
        _ => Shopper::from_request_parts(&mut parts, app).await?.0,
    };
    let key = match layers >= PurchaseLayers::Idempotency {
        true => idempotency_key(&parts.headers)?.map(str::to_owned),
        false => None,
    };
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
                receipt: match layers {
                    PurchaseLayers::Full => hand_off(app, intent).await?,
                    _ => receipt_of(&intent),
                },
                replay,
            }),
            Taken::Refused(refusal) => Ok(Answer::Refused(refusal)),
        },
        Some(key) => keyed::buy(app, &slot, user_id, quantity, &key).await,
    }
}

/// The event id of `/api/events/{id}/purchase` when it is written as plain
/// digits (every client's case), read without the path extractor's
/// percent-decoding and allocation; `None` sends the request to [`Id`],
/// which decides anything else exactly as for every other route.
fn plain_event_id(path: &str) -> Option<i64> {
    let digits = path
        .strip_prefix("/api/events/")?
        .strip_suffix("/purchase")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().filter(|id| *id > 0)
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(raw) if idempotency::valid_key(raw.as_bytes()) => Ok(raw.to_str().ok()),
        Some(_) => Err(ApiError::invalid(
            "Idempotency-Key must be 1..=255 printable ASCII characters",
        )),
    }
}

/// What `purchase.lua` decided for one attempt.
pub(super) enum Taken {
    /// Stock taken (or taken before under this order_no): the intent to persist.
    Bought {
        intent: Intent,
        replay: bool,
    },
    Refused(Refusal),
}

/// One attempt at the stock under `order_no`. `resumed`: an earlier attempt
/// with this order_no may have bought, so local shortcuts are not trusted.
pub(super) async fn take_stock(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
    resumed: bool,
) -> Result<Taken, ApiError> {
    // The local flag spares Redis the crowd that arrives after sell-out.
    if !resumed && slot.is_sold_out() {
        return Ok(Taken::Refused(sold_out_refusal(slot)));
    }
    let event_id = slot.event.id;
    let home = loading::home_bucket(&slot.event, user_id);
    let mut outcome = app
        .redis
        .purchase(home, user_id, quantity, order_no)
        .await?;
    if home.of > 1 && matches!(outcome, PurchaseOutcome::SoldOut { .. }) {
        outcome = Box::pin(buy_with_stock_from_other_buckets(
            app, home, user_id, quantity, order_no,
        ))
        .await?;
    }
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
                buckets: home.of,
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
        PurchaseOutcome::Paused => Refusal::Paused,
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

/// Rounds of asking the other buckets before a purchase that keeps
/// losing the units it moved home to other shoppers is answered 503.
const TRANSFER_ROUNDS: usize = 8;

/// The home bucket ran dry: stock moves from the other buckets, one at a
/// time, until the purchase finds enough (each transfer takes half of what
/// a bucket has left, so a bucket's own shoppers keep some). The attempt
/// after a move goes ahead of the shoppers queued on the home bucket, so
/// they do not take the units it brought. Other shoppers move and take
/// units at the same time, so one pass over the buckets can miss units
/// that landed behind it: after a pass the buckets are counted (a count
/// that no transfer crossed, see [`units_everywhere`]), and while they
/// still hold enough, another pass follows. Sold out only when that count
/// is below the quantity (`stock_left` 0, which lets the caller set the
/// local flag, when no bucket has a unit and none is in flight); a
/// purchase that lost [`TRANSFER_ROUNDS`] passes in a row while units were
/// left is answered 503 (retry), never sold out. A bucket that cannot be
/// reached (its primary failing over, or lost and not rebuilt) is skipped
/// for the others; if none of them could serve, the answer is 503 too.
async fn buy_with_stock_from_other_buckets(
    app: &AppState,
    home: Bucket,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
) -> Result<PurchaseOutcome, ApiError> {
    for round in 0..TRANSFER_ROUNDS {
        if round > 0 {
            // Units may have landed at home meanwhile.
            let outcome = app
                .redis
                .purchase_first(home, user_id, quantity, order_no)
                .await?;
            if !matches!(outcome, PurchaseOutcome::SoldOut { .. }) {
                return Ok(outcome);
            }
        }
        let mut unreachable = None;
        for donor in home.others() {
            match app.redis.move_stock(donor, home, quantity as i64).await {
                Ok(Some(0)) => continue,
                Ok(Some(_)) => {}
                Ok(None) => {
                    unreachable = Some(ApiError::Unavailable(
                        "a stock bucket is being restored after a Redis loss".into(),
                    ));
                    continue;
                }
                Err(err) => {
                    unreachable = Some(err.into());
                    continue;
                }
            }
            let outcome = app
                .redis
                .purchase_first(home, user_id, quantity, order_no)
                .await?;
            if !matches!(outcome, PurchaseOutcome::SoldOut { .. }) {
                return Ok(outcome);
            }
        }
        if let Some(err) = unreachable {
            // Some bucket could not be asked: not known to be sold out.
            return Err(err);
        }
        match units_everywhere(app, home).await? {
            Some(left) if left < quantity as i64 => {
                return Ok(PurchaseOutcome::SoldOut { stock_left: left })
            }
            // Enough left, or units kept moving while counted: again.
            _ => {}
        }
    }
    Err(ApiError::Unavailable(
        "units are moving between the sale's stock buckets; retry".into(),
    ))
}

/// Reads of all buckets made before a count is given up as moving.
const COUNT_READS: usize = 4;

/// The units in all of the event's buckets (stock plus units in flight
/// between two of them, counted once), as at one instant (see
/// [`crate::redis::Redis::bucket_states_between_transfers`]). Purchases
/// only take units, so a count they cross is an upper bound of what is left
/// at its end, which is what sold out needs. `None`: transfers kept
/// crossing the reads.
async fn units_everywhere(app: &AppState, home: Bucket) -> Result<Option<i64>, ApiError> {
    let buckets: Vec<Bucket> = Bucket::all(home.event_id, home.of).collect();
    let states = app
        .redis
        .bucket_states_between_transfers(&buckets, COUNT_READS)
        .await?;
    Ok(states.map(|states| {
        states
            .iter()
            .map(|s| s.stock_left.unwrap_or(0).max(0) + s.in_flight)
            .sum()
    }))
}

/// What the local sold-out flag answers.
fn sold_out_refusal(slot: &EventSlot) -> Refusal {
    if slot.has_ended() {
        Refusal::NotActive("the sale has ended")
    } else {
        Refusal::SoldOut
    }
}

/// Whether the event was ever loaded into Redis (read fresh: the cached copy
/// may predate the preheat).
async fn ever_loaded(app: &AppState, event_id: i64) -> Result<bool, ApiError> {
    Ok(db::events::get(&app.db, event_id)
        .await?
        .is_some_and(|e| e.preheated_at.is_some()))
}

/// Gives an accepted intent to the writers and says what to answer.
pub(super) async fn hand_off(app: &AppState, intent: Intent) -> Result<Receipt, ApiError> {
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
            Some(Settled::Confirmed) => receipt.status = OrderStatus::Confirmed,
            Some(Settled::Failed(reason)) => {
                receipt.status = OrderStatus::Failed;
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
