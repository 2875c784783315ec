//! The invariant checker of SPEC §5, for one event, from Postgres and Redis.
//! Used by `GET /admin/events/{id}/invariants`, the tests and the load
//! generator; each check reports its figures, not just a verdict.
//!
//! I5 (every acknowledged order persisted) and I6 (idempotent replies) need
//! the client's view: the load generator and the tests check those.

use serde::Serialize;
use sqlx::PgPool;

use crate::{
    db::{events::Event, DbError},
    error::ApiError,
    reconciler,
    redis::Redis,
};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
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

#[derive(sqlx::FromRow)]
struct MoneyFigures {
    confirmed_orders: i64,
    confirmed_amount: i64,
    confirmed_quantity: i64,
    nonfailed_quantity: i64,
    payments: i64,
    payments_amount: i64,
    debits: i64,
    debits_amount: i64,
    payments_on_failed: i64,
    confirmed_without_payment: i64,
    max_user_quantity: i64,
    users_over_limit: i64,
}

pub async fn check_event(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<InvariantReport, ApiError> {
    let snapshot = redis.snapshot(event.id).await?;
    let money = money_figures(db, event).await?;
    let mut checks = Vec::new();
    let mut check =
        |name: &'static str, ok: bool, detail: String| checks.push(Check { name, ok, detail });

    let stock_left = snapshot
        .stock_left
        .unwrap_or(event.stock_total - money.nonfailed_quantity);
    let held: i64 = snapshot.bought.values().sum();
    let pending_qty: i64 = snapshot.ledger.iter().map(|(_, e)| e.quantity as i64).sum();
    let drained = snapshot.ledger.is_empty();

    if snapshot.loaded {
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

    let (min_balance,): (Option<i64>,) = sqlx::query_as("SELECT min(balance) FROM wallets")
        .fetch_one(db)
        .await
        .map_err(DbError::from)?;
    check(
        "I2 never negative",
        stock_left >= 0 && min_balance.unwrap_or(0) >= 0,
        format!(
            "stock_left {stock_left}, lowest wallet balance {}",
            min_balance.unwrap_or(0)
        ),
    );

    let redis_max = snapshot.bought.values().copied().max().unwrap_or(0);
    check(
        "I3 per-user limit",
        money.users_over_limit == 0 && redis_max <= event.per_user_limit as i64,
        format!(
            "limit {}, max per user: postgres {} / redis {}, users over: {}",
            event.per_user_limit, money.max_user_quantity, redis_max, money.users_over_limit
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
        event_sold(db, event.id).await? == money.confirmed_quantity,
        format!(
            "events.sold matches Σ confirmed quantity {}",
            money.confirmed_quantity
        ),
    );

    let (broken_chain,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (
            SELECT version_after - lag(version_after) OVER w AS step,
                   balance_after, lag(balance_after) OVER w - amount AS expected_balance
            FROM wallet_debits WHERE user_id IN (SELECT user_id FROM orders WHERE event_id = $1)
            WINDOW w AS (PARTITION BY user_id ORDER BY version_after)
         ) s WHERE step = 0 OR (step = 1 AND balance_after <> expected_balance)",
    )
    .bind(event.id)
    .fetch_one(db)
    .await
    .map_err(DbError::from)?;
    check(
        "I7 versions",
        broken_chain == 0,
        format!("debits reusing a version or not chaining balances: {broken_chain}"),
    );

    let expected = reconciler::expected_state(db, event, &snapshot).await?;
    let drift = reconciler::drift(&snapshot, &expected);
    check(
        "I8 no drift",
        !snapshot.loaded || drift.is_none(),
        format!(
            "stock drift {:?}, buyers drifting {}",
            drift.stock,
            drift.buyers.len()
        ),
    );

    check(
        "drained",
        drained,
        format!(
            "pending intents {} ({} units)",
            snapshot.ledger.len(),
            pending_qty
        ),
    );

    let ok = checks.iter().all(|c| c.ok);
    Ok(InvariantReport {
        event_id: event.id,
        ok,
        drained,
        checks,
    })
}

async fn event_sold(db: &PgPool, id: i64) -> Result<i64, DbError> {
    let (sold,): (i64,) = sqlx::query_as("SELECT sold FROM events WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(sold)
}

async fn money_figures(db: &PgPool, event: &Event) -> Result<MoneyFigures, DbError> {
    Ok(sqlx::query_as(
        "WITH o AS (SELECT * FROM orders WHERE event_id = $1),
              per_user AS (SELECT user_id, sum(quantity) AS q FROM o WHERE status <> 'failed' GROUP BY user_id)
         SELECT
           (SELECT count(*) FROM o WHERE status = 'confirmed')                                  AS confirmed_orders,
           (SELECT coalesce(sum(amount), 0)::int8 FROM o WHERE status = 'confirmed')             AS confirmed_amount,
           (SELECT coalesce(sum(quantity), 0)::int8 FROM o WHERE status = 'confirmed')           AS confirmed_quantity,
           (SELECT coalesce(sum(quantity), 0)::int8 FROM o WHERE status <> 'failed')             AS nonfailed_quantity,
           (SELECT count(*) FROM payments WHERE event_id = $1)                                  AS payments,
           (SELECT coalesce(sum(amount), 0)::int8 FROM payments WHERE event_id = $1)             AS payments_amount,
           (SELECT count(*) FROM wallet_debits d JOIN o USING (order_no))                       AS debits,
           (SELECT coalesce(sum(d.amount), 0)::int8 FROM wallet_debits d JOIN o USING (order_no)) AS debits_amount,
           (SELECT count(*) FROM payments p JOIN o USING (order_no) WHERE o.status = 'failed')   AS payments_on_failed,
           (SELECT count(*) FROM o WHERE status = 'confirmed' AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_no = o.order_no)) AS confirmed_without_payment,
           (SELECT coalesce(max(q), 0)::int8 FROM per_user)                                      AS max_user_quantity,
           (SELECT count(*) FROM per_user WHERE q > $2)                                          AS users_over_limit",
    )
    .bind(event.id)
    .bind(event.per_user_limit as i64)
    .fetch_one(db)
    .await?)
}
