//! I4 against Postgres: payments, confirmed order amounts and, when this run
//! created the wallets, every wallet's debit agree to the cent.

use std::{collections::HashMap, fmt::Write as _};

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    check::{sample_list, Check, Setup},
    orders::Row,
};

/// I4: payments, confirmed amounts and, for fresh wallets, every debit agree.
pub(super) async fn money_check(
    pool: &PgPool,
    setup: &Setup<'_>,
    rows: &HashMap<Uuid, Row>,
) -> anyhow::Result<Check> {
    const NAME: &str = "I4 payments - refunds = confirmed amounts = wallet debits";
    let confirmed: i64 = rows.values().filter(|r| r.holds()).map(|r| r.amount).sum();
    let (paid, payments, refunded, refunds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(amount), 0)::bigint FROM payments WHERE event_id = $1),
                (SELECT COUNT(*) FROM payments WHERE event_id = $1),
                (SELECT COALESCE(SUM(amount), 0)::bigint FROM refunds WHERE event_id = $1),
                (SELECT COUNT(*) FROM refunds WHERE event_id = $1)",
    )
    .bind(setup.event_id)
    .fetch_one(pool)
    .await
    .context("SELECT ... FROM payments, refunds")?;
    let confirmed_orders = rows.values().filter(|r| r.holds()).count() as i64;
    let refunded_orders = rows.values().filter(|r| r.refunded).count() as i64;
    let mut ok = paid - refunded == confirmed
        && payments == confirmed_orders + refunded_orders
        && refunds == refunded_orders;
    let mut detail = format!(
        "payments {payments} summing {paid}, refunds {refunds} summing {refunded}; confirmed orders {confirmed_orders} summing {confirmed}, refunded orders {refunded_orders}"
    );

    if setup.fresh_wallets {
        let (wallets_ok, wallets) = wallet_debits(pool, setup, rows, confirmed).await?;
        ok &= wallets_ok;
        detail.push_str(&wallets);
    } else {
        let _ = write!(
            detail,
            "; per-wallet check skipped (wallets existed before this run)"
        );
    }
    Ok(Check::client(NAME, ok, detail))
}

/// Every wallet of the run lost exactly its shopper's confirmed amounts
/// (a refunded order's debit came back), and
/// all of them together `confirmed`; only when the run created the wallets,
/// so that their initial balances are known.
async fn wallet_debits(
    pool: &PgPool,
    setup: &Setup<'_>,
    rows: &HashMap<Uuid, Row>,
    confirmed: i64,
) -> anyhow::Result<(bool, String)> {
    let plan = setup.plan;
    let last = setup.first_user_id + plan.knobs.users as i64;
    let wallets: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, balance FROM wallets WHERE user_id >= $1 AND user_id < $2")
            .bind(setup.first_user_id)
            .bind(last)
            .fetch_all(pool)
            .await
            .context("SELECT ... FROM wallets")?;
    let mut spent: HashMap<i64, i64> = HashMap::new();
    for r in rows.values().filter(|r| r.holds()) {
        *spent.entry(r.user_id).or_default() += r.amount;
    }
    let payers_end = setup.first_user_id + plan.payers() as i64;
    let mut off = Vec::new();
    let mut debited = 0i64;
    for (user, balance) in &wallets {
        let initial = if *user < payers_end {
            plan.funded_balance()
        } else {
            0
        };
        let s = spent.get(user).copied().unwrap_or(0);
        debited += initial - balance;
        if initial - balance != s || *balance < 0 {
            off.push(format!("user {user}: {initial} - {balance} != {s}"));
        }
    }
    let detail = format!(
        "; {} wallets debited {debited} in total, {} shoppers where initial - final != their confirmed amounts{}",
        wallets.len(),
        off.len(),
        sample_list(&off)
    );
    Ok((off.is_empty() && debited == confirmed, detail))
}
