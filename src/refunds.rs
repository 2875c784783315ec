//! Money back: a shopper's cancellation or an operator's refund of one
//! confirmed order, exactly once.
//!
//! 1. One Postgres transaction ([`commit`]): the order's row `FOR UPDATE`
//!    (a second refund of the order waits, then sees the first's outcome and
//!    answers with the same refund), the event's row `FOR KEY SHARE` (fenced
//!    against a rebuild like a writer batch), the wallet credited with a
//!    versioned UPDATE and its `refund` ledger row, the `refunds` row
//!    (UNIQUE order_no), the order `cancelled`/`refunded`, the payment
//!    `refunded`, the event's `sold` less the order's units.
//! 2. Then the units go back to the sale in Redis ([`return_stock`],
//!    `refund.lua`): exactly once, because the script records the order_no
//!    in the event's `returned` set in the same atomic step, and a replay
//!    finds it there. Then `refunds.stock_returned` is set. A crash between
//!    1 and 2 leaves a refund with `stock_returned` false: the reconciler
//!    finishes it ([`finish_event`]).
//!
//! An order not in Postgres yet (its intent is pending in Redis) is refused
//! with [`RefundError::Pending`]: nothing changes, the client retries.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db::{
        self,
        orders::Order,
        refunds::{NewRefund, Refund},
        wallets::LedgerKind,
        DbError,
    },
    loading,
    redis::{Bucket, Redis, RedisError, RefundedOrder, StockReturn},
};

/// Who asks for the money back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    /// The shopper, for their own order, within the event's cancellation window.
    Shopper(i64),
    /// An operator, for any confirmed order.
    Operator,
}

impl Requester {
    fn kind(self) -> &'static str {
        match self {
            Self::Shopper(_) => "cancel",
            Self::Operator => "refund",
        }
    }

    /// The order event downstream systems receive (through the outbox).
    fn event_kind(self) -> &'static str {
        match self {
            Self::Shopper(_) => db::outbox::kind::CANCELLED,
            Self::Operator => db::outbox::kind::REFUNDED,
        }
    }

    /// The order's status once refunded.
    fn status(self) -> &'static str {
        match self {
            Self::Shopper(_) => "cancelled",
            Self::Operator => "refunded",
        }
    }

    fn may_see(self, user_id: i64) -> bool {
        match self {
            Self::Shopper(shopper) => shopper == user_id,
            Self::Operator => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// No such order, or another shopper's.
    #[error("order not found")]
    NotFound,
    /// Accepted, not persisted yet: retry shortly.
    #[error("the order is still pending; retry shortly")]
    Pending,
    /// Failed orders were never charged.
    #[error("the order failed and was never charged")]
    Failed,
    /// The event allows no cancellation, or its window for this order is over.
    #[error("{0}")]
    WindowClosed(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl From<sqlx::Error> for RefundError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(err.into())
    }
}

/// The answer to a refund request: the same for every repeat.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RefundAnswer {
    pub order_no: Uuid,
    /// The order's status now: `cancelled` or `refunded`.
    #[schema(value_type = crate::intent::OrderStatus)]
    pub status: String,
    pub refund: RefundView,
}

/// A refund as answered (its stock bookkeeping is not part of the answer).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RefundView {
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub kind: String,
    pub reason: String,
    pub created_at: chrono::DateTime<Utc>,
}

impl RefundAnswer {
    fn new(refund: &Refund) -> Self {
        Self {
            order_no: refund.order_no,
            status: if refund.kind == "cancel" {
                "cancelled"
            } else {
                "refunded"
            }
            .into(),
            refund: RefundView {
                event_id: refund.event_id,
                user_id: refund.user_id,
                quantity: refund.quantity,
                amount: refund.amount,
                kind: refund.kind.clone(),
                reason: refund.reason.clone(),
                created_at: refund.created_at,
            },
        }
    }
}

/// Transactions retried on a transient error (deadlock, lost connection).
const MAX_ATTEMPTS: u32 = 5;
/// Rounds of the versioned wallet credit within one transaction.
const MAX_CREDIT_ROUNDS: u32 = 32;
/// How long a request waits for the writer to ack an order it just refunded
/// before it leaves the stock return to the reconciler.
const WAIT_FOR_ACK: Duration = Duration::from_secs(2);

/// Refunds one order (see the module doc); the same answer for a repeat.
pub async fn refund(
    db: &PgPool,
    redis: &Redis,
    order_no: Uuid,
    requester: Requester,
    reason: &str,
) -> Result<RefundAnswer, RefundError> {
    let mut attempt = 0;
    let refund = loop {
        attempt += 1;
        match commit(db, redis, order_no, requester, reason).await {
            Err(RefundError::Db(err)) if err.is_transient() && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
            }
            other => break other?,
        }
    };
    if !refund.stock_returned {
        // The refund is decided by the commit: trouble returning the units
        // now (Redis slow or away, no Postgres connection) is not the
        // shopper's; the reconciler finishes it.
        if let Err(err) = return_stock_soon(db, redis, &refund).await {
            metrics::counter!("seckill_refund_returns_deferred_total").increment(1);
            tracing::warn!(error = %err, order_no = %refund.order_no, "refund committed; its units are left to the reconciler");
        }
    }
    Ok(RefundAnswer::new(&refund))
}

/// Step 2 for one refund, waiting up to [`WAIT_FOR_ACK`] for its writer's ack.
async fn return_stock_soon(db: &PgPool, redis: &Redis, refund: &Refund) -> Result<(), RefundError> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_ACK;
    loop {
        let done = return_stock(db, redis, std::slice::from_ref(refund)).await?;
        if done == 1 || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        // Its writer has committed and not acked yet: a few milliseconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Step 1: the refund in Postgres, or the one already there.
async fn commit(
    db: &PgPool,
    redis: &Redis,
    order_no: Uuid,
    requester: Requester,
    reason: &str,
) -> Result<Refund, RefundError> {
    let mut tx = db.begin().await?;
    let Some(order) = db::orders::lock_for_refund(&mut *tx, order_no).await? else {
        drop(tx);
        return Err(not_persisted(db, redis, order_no, requester).await?);
    };
    if !requester.may_see(order.user_id) {
        return Err(RefundError::NotFound);
    }
    match order.status.as_str() {
        "confirmed" => {}
        "failed" => return Err(RefundError::Failed),
        _ => {
            // Refunded before (a double click, a retry, another engine).
            return db::refunds::get(&mut *tx, order_no).await?.ok_or_else(|| {
                RefundError::Db(DbError::Batch(format!(
                    "order {order_no} is {} without a refund row",
                    order.status
                )))
            });
        }
    }
    let event = db::events::get_in(&mut *tx, order.event_id)
        .await?
        .ok_or(RefundError::NotFound)?;
    if let Requester::Shopper(_) = requester {
        check_window(&order, event.cancel_window_seconds)?;
    }
    db::events::share_for_refund(&mut *tx, order.event_id).await?;
    credit_wallet(&mut tx, &order, reason).await?;
    let refund = db::refunds::insert(
        &mut *tx,
        &NewRefund {
            order_no,
            event_id: order.event_id,
            user_id: order.user_id,
            quantity: order.quantity,
            amount: order.amount,
            kind: requester.kind(),
            reason,
        },
    )
    .await?;
    if !db::orders::mark_refunded(&mut *tx, order_no, requester.status()).await? {
        return Err(
            DbError::Batch(format!("order {order_no} left confirmed under its lock")).into(),
        );
    }
    db::outbox::record_order_now(&mut *tx, order_no, requester.event_kind()).await?;
    if !db::money::mark_payment_refunded(&mut *tx, order_no).await? {
        return Err(DbError::Batch(format!(
            "confirmed order {order_no} has no captured payment"
        ))
        .into());
    }
    db::events::remove_sold(&mut *tx, order.event_id, order.quantity as i64).await?;
    tx.commit().await?;
    metrics::counter!("seckill_refunds_total", "kind" => requester.kind()).increment(1);
    Ok(refund)
}

/// The shopper's window: `cancel_window_seconds` after the purchase was accepted.
fn check_window(order: &Order, window: Option<i32>) -> Result<(), RefundError> {
    let Some(seconds) = window else {
        return Err(RefundError::WindowClosed(
            "this sale allows no cancellation".into(),
        ));
    };
    let closes = order.created_at + TimeDelta::seconds(seconds as i64);
    if Utc::now() >= closes {
        return Err(RefundError::WindowClosed(format!(
            "the cancellation window closed at {}",
            closes.to_rfc3339()
        )));
    }
    Ok(())
}

/// Credits the order's amount back with a versioned UPDATE and its ledger row.
async fn credit_wallet(
    tx: &mut sqlx::PgConnection,
    order: &Order,
    reason: &str,
) -> Result<(), RefundError> {
    for _ in 0..MAX_CREDIT_ROUNDS {
        let Some((_, version)) = db::wallets::versioned_state(&mut *tx, order.user_id).await?
        else {
            return Err(DbError::Batch(format!(
                "order {} was paid from no wallet",
                order.order_no
            ))
            .into());
        };
        if db::wallets::add_versioned(&mut *tx, order.user_id, order.amount, version)
            .await?
            .is_some()
        {
            db::wallets::append(
                &mut *tx,
                order.user_id,
                order.amount,
                LedgerKind::Refund,
                reason,
                Some(order.order_no),
            )
            .await?;
            return Ok(());
        }
        metrics::counter!("seckill_version_conflicts_total").increment(1);
    }
    Err(DbError::TooManyConflicts(MAX_CREDIT_ROUNDS).into())
}

/// Why an order Postgres does not have cannot be refunded: pending in a
/// live ledger, or unknown. Postgres is asked again after Redis: a writer
/// may have committed and acked between the two looks.
async fn not_persisted(
    db: &PgPool,
    redis: &Redis,
    order_no: Uuid,
    requester: Requester,
) -> Result<RefundError, RefundError> {
    for event_id in redis.live_events().await? {
        let Some(event) = db::events::get(db, event_id).await? else {
            continue;
        };
        if let Some((_, entry)) = redis
            .event_ledger_entries(loading::event_buckets(&event), &[order_no])
            .await?
            .pop()
        {
            return Ok(if requester.may_see(entry.user_id) {
                RefundError::Pending
            } else {
                RefundError::NotFound
            });
        }
    }
    Ok(match db::orders::get(db, order_no).await? {
        Some(order) if requester.may_see(order.user_id) => RefundError::Pending,
        _ => RefundError::NotFound,
    })
}

/// Step 2: the units of committed refunds back to the sale in Redis, once
/// each; the refunds done with are marked `stock_returned`, and engines are
/// told the stock came back. Returns how many are done with.
pub async fn return_stock(
    db: &PgPool,
    redis: &Redis,
    refunds: &[Refund],
) -> Result<usize, RefundError> {
    let mut events: Vec<i64> = refunds.iter().map(|r| r.event_id).collect();
    events.sort_unstable();
    events.dedup();
    let mut done_count = 0;
    for event_id in events {
        let orders: Vec<RefundedOrder> = refunds
            .iter()
            .filter(|r| r.event_id == event_id)
            .map(|r| RefundedOrder {
                order_no: r.order_no,
                user_id: r.user_id,
                quantity: r.quantity,
            })
            .collect();
        let of = match db::events::get(db, event_id).await? {
            Some(event) => loading::bucket_count(&event),
            None => 1,
        };
        let mut outcomes = vec![StockReturn::AlreadyReturned; orders.len()];
        let mut per_bucket: std::collections::BTreeMap<Bucket, Vec<usize>> = Default::default();
        for (i, order) in orders.iter().enumerate() {
            per_bucket
                .entry(Bucket::home(event_id, of, order.user_id))
                .or_default()
                .push(i);
        }
        for (bucket, at) in per_bucket {
            let some: Vec<RefundedOrder> = at.iter().map(|&i| orders[i]).collect();
            for (i, outcome) in at
                .into_iter()
                .zip(redis.return_refunded(bucket, &some).await?)
            {
                outcomes[i] = outcome;
            }
        }
        let done: Vec<Uuid> = orders
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_done())
            .map(|(r, _)| r.order_no)
            .collect();
        db::refunds::mark_returned(db, &done).await?;
        done_count += done.len();
        let returned = outcomes
            .iter()
            .filter(|o| **o == StockReturn::Returned)
            .count();
        if returned > 0 {
            metrics::counter!("seckill_refund_units_returned_total").increment(returned as u64);
            redis.publish_stock_back(event_id).await?;
        }
    }
    Ok(done_count)
}

/// Most refunds one reconciler pass finishes per event.
const FINISH_PER_PASS: i64 = 1_024;

/// The reconciler's step: refunds of an event committed more than `grace`
/// ago whose units are not back (a crash between the commit and the
/// return, or an order its writer had not acked yet) are returned now.
/// Returns how many were finished.
pub async fn finish_event(
    db: &PgPool,
    redis: &Redis,
    event_id: i64,
    grace: Duration,
) -> Result<usize, RefundError> {
    let older_than = Utc::now() - TimeDelta::from_std(grace).unwrap_or(TimeDelta::zero());
    let stuck = db::refunds::unreturned(db, event_id, Some(older_than), FINISH_PER_PASS).await?;
    if stuck.is_empty() {
        return Ok(0);
    }
    return_stock(db, redis, &stuck).await
}
