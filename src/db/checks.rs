//! Figures the invariant checker (SPEC §5) reads from Postgres for one event.

use sqlx::{FromRow, PgExecutor};

use super::DbError;

/// Orders, payments and debits of one event, summed.
#[derive(Debug, FromRow)]
pub struct MoneyFigures {
    pub confirmed_orders: i64,
    pub confirmed_amount: i64,
    pub confirmed_quantity: i64,
    pub nonfailed_quantity: i64,
    pub payments: i64,
    pub payments_amount: i64,
    pub debits: i64,
    pub debits_amount: i64,
    pub payments_on_failed: i64,
    pub confirmed_without_payment: i64,
    pub max_user_quantity: i64,
    pub users_over_limit: i64,
    /// Orders cancelled or refunded, and their units.
    pub refunded_orders: i64,
    pub refunded_quantity: i64,
    /// `refunds` rows and their amounts.
    pub refunds: i64,
    pub refunds_amount: i64,
    /// Payments in state `refunded`.
    pub payments_refunded: i64,
    /// `refund` rows of the wallet ledger for the event's orders.
    pub refund_credits: i64,
    pub refund_credits_amount: i64,
}

pub async fn money(
    db: impl PgExecutor<'_>,
    event_id: i64,
    per_user_limit: i32,
) -> Result<MoneyFigures, DbError> {
    Ok(sqlx::query_as(
        "WITH o AS (SELECT * FROM orders WHERE event_id = $1),
              per_user AS (SELECT user_id, sum(quantity) AS q FROM o WHERE status = 'confirmed' GROUP BY user_id)
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
           (SELECT count(*) FROM per_user WHERE q > $2)                                          AS users_over_limit,
           (SELECT count(*) FROM o WHERE status IN ('cancelled', 'refunded'))                    AS refunded_orders,
           (SELECT coalesce(sum(quantity), 0)::int8 FROM o WHERE status IN ('cancelled', 'refunded')) AS refunded_quantity,
           (SELECT count(*) FROM refunds WHERE event_id = $1)                                   AS refunds,
           (SELECT coalesce(sum(amount), 0)::int8 FROM refunds WHERE event_id = $1)              AS refunds_amount,
           (SELECT count(*) FROM payments WHERE event_id = $1 AND state = 'refunded')            AS payments_refunded,
           (SELECT count(*) FROM wallet_ledger l JOIN o USING (order_no) WHERE l.kind = 'refund') AS refund_credits,
           (SELECT coalesce(sum(l.delta), 0)::int8 FROM wallet_ledger l JOIN o USING (order_no) WHERE l.kind = 'refund') AS refund_credits_amount",
    )
    .bind(event_id)
    .bind(per_user_limit as i64)
    .fetch_one(db)
    .await?)
}

/// `events.sold`, the writers' counter of confirmed units.
pub async fn sold(db: impl PgExecutor<'_>, event_id: i64) -> Result<i64, DbError> {
    let (sold,): (i64,) = sqlx::query_as("SELECT sold FROM events WHERE id = $1")
        .bind(event_id)
        .fetch_one(db)
        .await?;
    Ok(sold)
}

/// The lowest wallet balance (I2).
pub async fn lowest_balance(db: impl PgExecutor<'_>) -> Result<i64, DbError> {
    let (min,): (Option<i64>,) = sqlx::query_as("SELECT min(balance) FROM wallets")
        .fetch_one(db)
        .await?;
    Ok(min.unwrap_or(0))
}

/// Debits of the event's buyers that reuse a wallet version or do not chain
/// balances from one version to the next (I7).
pub async fn broken_debit_chains(db: impl PgExecutor<'_>, event_id: i64) -> Result<i64, DbError> {
    let (broken,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (
            SELECT version_after - lag(version_after) OVER w AS step,
                   balance_after, lag(balance_after) OVER w - amount AS expected_balance
            FROM wallet_debits WHERE user_id IN (SELECT user_id FROM orders WHERE event_id = $1)
            WINDOW w AS (PARTITION BY user_id ORDER BY version_after)
         ) s WHERE step = 0 OR (step = 1 AND balance_after <> expected_balance)",
    )
    .bind(event_id)
    .fetch_one(db)
    .await?;
    Ok(broken)
}

/// Wallets of the event's buyers whose ledger does not sum to their balance,
/// and how many wallets were compared.
pub async fn ledger_mismatches(
    db: impl PgExecutor<'_>,
    event_id: i64,
) -> Result<(i64, i64), DbError> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE w.balance <> coalesce(l.total, 0)), count(*)
         FROM wallets w
         LEFT JOIN LATERAL (SELECT sum(delta)::int8 AS total FROM wallet_ledger WHERE user_id = w.user_id) l ON true
         WHERE w.user_id IN (SELECT DISTINCT user_id FROM orders WHERE event_id = $1)",
    )
    .bind(event_id)
    .fetch_one(db)
    .await?)
}
