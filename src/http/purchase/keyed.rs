//! A purchase under an Idempotency-Key (see [`crate::idempotency`]): claim
//! the key, buy under its order_no, keep the answer; a resumed attempt that
//! Redis refuses is settled once in Postgres.

use chrono::Utc;
use uuid::Uuid;

use super::{
    super::REQUEST_TIMEOUT,
    answer::{receipt_of, Answer, Receipt, Refusal},
    hand_off, take_stock, Taken,
};
use crate::{
    catalog::EventSlot,
    config::AckMode,
    db,
    error::ApiError,
    idempotency::{self, Claim, IdempotencyStore, StoreError},
    intent::{Intent, OrderStatus, NOT_ACCEPTED, STOCK_LOST},
    loading,
    state::AppState,
};

/// Buys once per (shopper, key, request), within [`REQUEST_TIMEOUT`]: an
/// attempt can then be presumed dead after [`idempotency::STALE_AFTER`].
pub(super) async fn buy(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    key: &str,
) -> Result<Answer, ApiError> {
    tokio::time::timeout(REQUEST_TIMEOUT, buy_once(app, slot, user_id, quantity, key))
        .await
        .unwrap_or(Err(ApiError::RequestTimeout))
}

async fn buy_once(
    app: &AppState,
    slot: &EventSlot,
    user_id: i64,
    quantity: i32,
    key: &str,
) -> Result<Answer, ApiError> {
    let store = IdempotencyStore::new(
        &app.redis,
        &app.durable_keys,
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
    let attempt = Attempt {
        app,
        slot,
        store: &store,
        user_id,
        quantity,
        order_no,
    };
    let answer = match attempt.run(resumed).await {
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

/// One attempt under a claimed key and its order_no.
struct Attempt<'a> {
    app: &'a AppState,
    slot: &'a EventSlot,
    store: &'a IdempotencyStore<'a>,
    user_id: i64,
    quantity: i32,
    order_no: Uuid,
}

impl Attempt<'_> {
    /// `resumed`: an earlier attempt with this order_no ended unanswered.
    async fn run(&self, resumed: bool) -> Result<Answer, ApiError> {
        let (app, order_no) = (self.app, self.order_no);
        let taken = take_stock(
            app,
            self.slot,
            self.user_id,
            self.quantity,
            order_no,
            resumed,
        );
        match taken.await? {
            Taken::Bought { intent, replay } => {
                match self.store.record_accepted(order_no).await {
                    Ok(()) => {}
                    Err(StoreError::Taken(winner)) => {
                        // Across a Redis loss two attempts under one key both
                        // bought: the first recorded keeps it, ours is undone.
                        app.redis.release(intent.bucket(), &[order_no]).await?;
                        return Ok(Answer::Accepted {
                            receipt: Receipt {
                                order_no: winner,
                                ..receipt_of(&intent)
                            },
                            replay: true,
                        });
                    }
                    Err(err) => {
                        // Accepted in Redis but the key is not durable yet:
                        // persist the order anyway; the client retries and
                        // resumes it.
                        app.writers.offer(intent);
                        return Err(err.into());
                    }
                }
                Ok(Answer::Accepted {
                    receipt: hand_off(app, intent).await?,
                    replay,
                })
            }
            Taken::Refused(refusal) if resumed => self.settle_unanswered(refusal).await,
            Taken::Refused(refusal) => Ok(Answer::Refused(refusal)),
        }
    }

    /// A resumed attempt that Redis now refuses. Either the earlier attempt
    /// never bought, or a Redis that since lost its state accepted it (and a
    /// copy may still be queued in some engine). Postgres decides, once: the
    /// order is written as failed unless it is there already, so no later
    /// copy can confirm it, and the answer matches what is persisted.
    async fn settle_unanswered(&self, refusal: Refusal) -> Result<Answer, ApiError> {
        let (app, order_no) = (self.app, self.order_no);
        let accepted = self.store.was_accepted(order_no).await?;
        let intent = Intent {
            order_no,
            event_id: self.slot.event.id,
            buckets: loading::bucket_count(&self.slot.event),
            user_id: self.user_id,
            quantity: self.quantity,
            amount: self.slot.event.price * self.quantity as i64,
            accepted_at: Utc::now(),
        };
        let order = db::orders::FailedOrder {
            order_no,
            event_id: intent.event_id,
            user_id: intent.user_id,
            quantity: intent.quantity,
            amount: intent.amount,
            // Acknowledged once (the key is durable): its stock went with Redis.
            reason: if accepted { STOCK_LOST } else { NOT_ACCEPTED },
        };
        let voided = db::orders::insert_failed_unless_present(&app.db, &order).await?;
        if voided && !accepted {
            return Ok(Answer::Refused(refusal));
        }
        // It was accepted once: the same 202 as then.
        let mut receipt = receipt_of(&intent);
        if app.settings.ack == AckMode::Durable {
            if let Some(order) = db::orders::get(&app.db, order_no).await? {
                receipt.status = if order.status == "confirmed" {
                    OrderStatus::Confirmed
                } else {
                    OrderStatus::Failed
                };
                receipt.failure_reason = order.failure_reason;
            }
        }
        Ok(Answer::Accepted {
            receipt,
            replay: true,
        })
    }
}
