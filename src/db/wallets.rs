//! `wallets`: balances with an optimistic-lock version.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};

use super::DbError;

#[derive(Clone, Copy, Debug, FromRow, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Wallet {
    pub user_id: i64,
    pub balance: i64,
    pub version: i64,
}

/// Creates a wallet or sets its balance; an existing wallet's version moves by 1.
pub async fn set_balance(pool: &PgPool, user_id: i64, balance: i64) -> Result<Wallet, DbError> {
    Ok(sqlx::query_as(
        "INSERT INTO wallets (user_id, balance) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET balance = EXCLUDED.balance, version = wallets.version + 1, updated_at = now()
         RETURNING user_id, balance, version",
    )
    .bind(user_id)
    .bind(balance)
    .fetch_one(pool)
    .await?)
}

/// Creates or sets `count` wallets from `first_user_id` in one statement
/// (the last id is computed without passing it: up to 2^63 − 1 is fine).
pub async fn seed(
    pool: &PgPool,
    first_user_id: i64,
    count: i64,
    balance: i64,
) -> Result<u64, DbError> {
    let done = sqlx::query(
        "INSERT INTO wallets (user_id, balance)
         SELECT g, $3 FROM generate_series($1::bigint, $1::bigint + ($2::bigint - 1)) AS g
         ON CONFLICT (user_id) DO UPDATE SET balance = EXCLUDED.balance, version = wallets.version + 1, updated_at = now()",
    )
    .bind(first_user_id)
    .bind(count)
    .bind(balance)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub async fn get(pool: &PgPool, user_id: i64) -> Result<Option<Wallet>, DbError> {
    Ok(
        sqlx::query_as("SELECT user_id, balance, version FROM wallets WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Balance and version of some wallets, for a versioned debit.
pub async fn states(
    db: impl PgExecutor<'_>,
    users: &[i64],
) -> Result<HashMap<i64, (i64, i64)>, DbError> {
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT user_id, balance, version FROM wallets WHERE user_id = ANY($1)")
            .bind(users)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(u, b, v)| (u, (b, v))).collect())
}

/// One debit of a round: the wallet, the amount, the version it was read at.
pub struct PlannedDebit {
    pub user_id: i64,
    pub amount: i64,
    pub version: i64,
}

/// Debits wallets with versioned UPDATEs (`WHERE version = $v AND balance >=
/// $amount`, at most one per wallet); returns (user, balance, version) of
/// those applied. A wallet missing from the answer moved underneath: a
/// conflict for the caller to count and retry with a fresh read.
pub async fn debit_versioned(
    db: impl PgExecutor<'_>,
    plan: &[PlannedDebit],
) -> Result<Vec<(i64, i64, i64)>, DbError> {
    Ok(sqlx::query_as(
        "UPDATE wallets AS w SET balance = w.balance - d.amount, version = w.version + 1, updated_at = now()
         FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS d(user_id, amount, version)
         WHERE w.user_id = d.user_id AND w.version = d.version AND w.balance >= d.amount
         RETURNING w.user_id, w.balance, w.version",
    )
    .bind(plan.iter().map(|d| d.user_id).collect::<Vec<_>>())
    .bind(plan.iter().map(|d| d.amount).collect::<Vec<_>>())
    .bind(plan.iter().map(|d| d.version).collect::<Vec<_>>())
    .fetch_all(db)
    .await?)
}
