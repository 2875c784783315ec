//! `wallets`: balances with an optimistic-lock version.

use serde::Serialize;
use sqlx::{FromRow, PgPool};

use super::DbError;

#[derive(Clone, Copy, Debug, FromRow, Serialize, PartialEq, Eq)]
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

/// Creates or sets `count` wallets from `first_user_id` in one statement.
pub async fn seed(
    pool: &PgPool,
    first_user_id: i64,
    count: i64,
    balance: i64,
) -> Result<u64, DbError> {
    let done = sqlx::query(
        "INSERT INTO wallets (user_id, balance)
         SELECT g, $3 FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS g
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
