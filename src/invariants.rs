//! The invariant checker of SPEC §5, for one event, from Postgres and Redis.
//! Used by `GET /admin/events/{id}/invariants`, the tests and the load
//! generator; each check reports its figures, not just a verdict.
//!
//! I5 (every acknowledged order persisted) and I6 (idempotent replies) need
//! the client's view: the load generator and the tests check those.
//!
//! With refunds (see [`crate::refunds`]): I1 is `stock_total − (confirmed +
//! refunded units) + returned units − pending = stock_left` (returned: units
//! of refunds `refund.lua` has taken back); I4 is `Σ payments − Σ refunds =
//! Σ confirmed amounts = Σ debits − Σ refund credits`, with one refund, one
//! refunded payment and one credit row per refunded order; I9: every wallet
//! of the event's buyers has a ledger that sums to its balance.
//!
//! I1 also covers stock adjustments: the initial stock plus the applied
//! adjustments is `stock_total`, in Postgres and in Redis's meta total.
//!
//! It reads Redis in bounded steps (the counters, and the ledger in flight):
//! I1 uses the `held` counter, I8 the aggregates of [`crate::drift`]. Buyer
//! by buyer comparison is the reconciler's sweep.

use serde::Serialize;
use sqlx::PgPool;

use crate::{
    db::{self, events::Event, DbError},
    drift::{DriftError, Observation},
    loading,
    redis::{Redis, RedisError},
};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<DriftError> for CheckError {
    fn from(err: DriftError) -> Self {
        match err {
            DriftError::Redis(err) => Self::Redis(err),
            DriftError::Db(err) => Self::Db(err),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvariantReport {
    pub event_id: i64,
    pub ok: bool,
    /// Ledger is empty: every accepted purchase has been persisted and settled.
    pub drained: bool,
    pub checks: Vec<Check>,
}

impl InvariantReport {
    /// One line per check, for terminals.
    pub fn render(&self) -> String {
        let mut out = format!(
            "event {} invariants ({}):\n",
            self.event_id,
            if self.drained {
                "drained"
            } else {
                "NOT drained"
            }
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  [{}] {:<28} {}\n",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out
    }
}

pub async fn check_event(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<InvariantReport, CheckError> {
    let seen = Observation::take(db, redis, event).await?;
    let state = seen.state;
    let money = db::checks::money(db, event.id, event.per_user_limit).await?;
    let mut checks = Vec::new();
    let mut check =
        |name: &'static str, ok: bool, detail: String| checks.push(Check { name, ok, detail });

    let stock_left = state
        .stock_left
        .unwrap_or(event.stock_total - money.confirmed_quantity - seen.unreturned_units());
    let held = state.held.unwrap_or(-1);
    let pending_qty = state.pending_units;
    let drained = state.pending == 0;

    if state.loaded {
        check(
            "I1 conservation (redis)",
            event.stock_total == stock_left + held,
            format!(
                "stock_total {} = stock_left {} + held {}",
                event.stock_total, stock_left, held
            ),
        );
    }
    // Stock adjustments: stock_total = initial + Σ applied, once in Redis
    // and in Postgres, none left pending.
    let initial = db::events::stock_initial(db, event.id).await?;
    let (adjusted, adjustments_pending) = db::adjustments::totals(db, event.id).await?;
    check(
        "I1 stock adjustments",
        initial + adjusted == event.stock_total
            && adjustments_pending == 0
            && (!state.loaded || state.total == event.stock_total),
        format!(
            "initial {initial} + applied adjustments {adjusted} = stock_total {} (redis total {}); pending adjustments {adjustments_pending}",
            event.stock_total,
            if state.loaded { state.total.to_string() } else { "-".into() },
        ),
    );
    // Units refunded and back in the sale: refunded ones less those Redis
    // has not taken back yet (all of them are back once drained).
    let returned = money.refunded_quantity - seen.unreturned_units();
    let sold_ever = money.confirmed_quantity + money.refunded_quantity;
    let expected_left = event.stock_total - sold_ever + returned - pending_qty;
    check(
        "I1 conservation (postgres)",
        expected_left == stock_left,
        format!(
            "stock_total {} - sold {} (confirmed {} + refunded {}) + returned {} - pending {} = {} vs stock_left {}",
            event.stock_total,
            sold_ever,
            money.confirmed_quantity,
            money.refunded_quantity,
            returned,
            pending_qty,
            expected_left,
            stock_left
        ),
    );

    let min_balance = db::checks::lowest_balance(db).await?;
    check(
        "I2 never negative",
        stock_left >= 0 && min_balance >= 0,
        format!("stock_left {stock_left}, lowest wallet balance {min_balance}"),
    );

    check(
        "I3 per-user limit",
        money.users_over_limit == 0,
        format!(
            "limit {}, max per user {}, users over: {}",
            event.per_user_limit, money.max_user_quantity, money.users_over_limit
        ),
    );

    check(
        "I4 money",
        money.payments_amount - money.refunds_amount == money.confirmed_amount
            && money.debits_amount - money.refund_credits_amount == money.confirmed_amount
            && money.payments == money.confirmed_orders + money.refunded_orders
            && money.debits == money.payments
            && money.refunds == money.refunded_orders
            && money.payments_refunded == money.refunds
            && money.refund_credits == money.refunds
            && money.refund_credits_amount == money.refunds_amount
            && money.payments_on_failed == 0
            && money.confirmed_without_payment == 0,
        format!(
            "payments {} ({}) - refunds {} ({}) = confirmed {} ({}) = debits {} ({}) - refund credits {} ({}); payments refunded {}, payments on failed {}, confirmed without payment {}",
            money.payments_amount,
            money.payments,
            money.refunds_amount,
            money.refunds,
            money.confirmed_amount,
            money.confirmed_orders,
            money.debits_amount,
            money.debits,
            money.refund_credits_amount,
            money.refund_credits,
            money.payments_refunded,
            money.payments_on_failed,
            money.confirmed_without_payment
        ),
    );

    let (off_ledger, wallets) = db::checks::ledger_mismatches(db, event.id).await?;
    check(
        "I9 wallet ledger",
        off_ledger == 0,
        format!(
            "buyers' wallets whose ledger does not sum to the balance: {off_ledger} of {wallets}"
        ),
    );

    check(
        "sold counter",
        db::checks::sold(db, event.id).await? == money.confirmed_quantity,
        format!(
            "events.sold matches Σ confirmed quantity {}",
            money.confirmed_quantity
        ),
    );

    let broken_chain = db::checks::broken_debit_chains(db, event.id).await?;
    check(
        "I7 versions",
        broken_chain == 0,
        format!("debits reusing a version or not chaining balances: {broken_chain}"),
    );

    let mut bucket_states = Vec::new();
    if loading::bucket_count(event) > 1 {
        for bucket in loading::buckets(event) {
            bucket_states.push((bucket, redis.bucket_state(bucket).await?));
        }
    }
    // A sale not in Redis at all (not preheated, or closed out) has no
    // buckets to balance; one with some loaded and some not has lost some.
    if bucket_states.iter().any(|(_, b)| b.loaded) {
        // Each bucket balances on its own (its stock and what its shoppers
        // hold make its total), and the buckets with the units in flight
        // between them make the event's.
        let mut unbalanced = Vec::new();
        let (mut accounted, mut in_flight) = (0, 0);
        for &(bucket, b) in &bucket_states {
            accounted += b.total + b.in_flight;
            in_flight += b.in_flight;
            let (stock, held) = (b.stock_left.unwrap_or(-1), b.held.unwrap_or(-1));
            if !b.loaded || stock < 0 || stock + held != b.total {
                unbalanced.push(format!(
                    "bucket {}: stock {stock} + held {held} vs total {}",
                    bucket.index, b.total
                ));
            }
        }
        check(
            "I1 buckets",
            unbalanced.is_empty() && accounted == event.stock_total,
            format!(
                "{} buckets, Σ totals + in flight {accounted} = stock_total {} ({in_flight} units in flight){}{}",
                loading::bucket_count(event),
                event.stock_total,
                if unbalanced.is_empty() { "" } else { "; " },
                unbalanced.join("; ")
            ),
        );
    }

    let drift = seen.drift();
    check(
        "I8 no drift",
        !state.loaded || drift.is_none(),
        format!(
            "stock (redis, expected) {:?}, held (redis, expected) {:?}",
            drift.stock, drift.held
        ),
    );

    check(
        "drained",
        drained,
        format!("pending intents {} ({} units)", state.pending, pending_qty),
    );

    let ok = checks.iter().all(|c| c.ok);
    Ok(InvariantReport {
        event_id: event.id,
        ok,
        drained,
        checks,
    })
}
