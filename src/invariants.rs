//! The invariant checker of SPEC §5, for one event, from Postgres and Redis.
//! Used by `GET /admin/events/{id}/invariants`, the tests and the load
//! generator; each check reports its figures, not just a verdict.
//!
//! I5 (every acknowledged order persisted) and I6 (idempotent replies) need
//! the client's view: the load generator and the tests check those.
//!
//! It reads Redis in bounded steps (the counters, and the ledger in flight):
//! I1 uses the `held` counter, I8 the aggregates of [`crate::drift`]. Buyer
//! by buyer comparison is the reconciler's sweep.

use serde::Serialize;
use sqlx::PgPool;

use crate::{
    db::{self, events::Event, DbError},
    drift::{DriftError, Observation},
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
        .unwrap_or(event.stock_total - money.nonfailed_quantity);
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
    let expected_left = event.stock_total - money.nonfailed_quantity - pending_qty;
    check(
        "I1 conservation (postgres)",
        expected_left == stock_left,
        format!(
            "stock_total {} - persisted {} - pending {} = {} vs stock_left {}",
            event.stock_total, money.nonfailed_quantity, pending_qty, expected_left, stock_left
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
        money.payments_amount == money.confirmed_amount
            && money.debits_amount == money.confirmed_amount
            && money.payments == money.confirmed_orders
            && money.debits == money.confirmed_orders
            && money.payments_on_failed == 0
            && money.confirmed_without_payment == 0,
        format!(
            "payments {} ({}) = confirmed {} ({}) = debits {} ({}); payments on failed {}, confirmed without payment {}",
            money.payments_amount,
            money.payments,
            money.confirmed_amount,
            money.confirmed_orders,
            money.debits_amount,
            money.debits,
            money.payments_on_failed,
            money.confirmed_without_payment
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
