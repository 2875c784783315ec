//! `wallets`: balances with an optimistic-lock version, and `wallet_ledger`:
//! the immutable row of every balance change, written in the same
//! transaction (the sum of a wallet's rows is its balance).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor, PgPool};
use uuid::Uuid;

use super::DbError;

#[derive(Clone, Copy, Debug, FromRow, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Wallet {
    pub user_id: i64,
    pub balance: i64,
    pub version: i64,
}

/// Creates a wallet or sets its balance, with the ledger row of the
/// difference (`seed` for a new wallet, `correction` for an existing one) in
/// the same transaction; an existing wallet moves by a versioned UPDATE.
pub async fn set_balance(pool: &PgPool, user_id: i64, balance: i64) -> Result<Wallet, DbError> {
    for _ in 0..MAX_VERSION_RETRIES {
        let mut tx = pool.begin().await?;
        let current: Option<(i64, i64)> =
            sqlx::query_as("SELECT balance, version FROM wallets WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        if current.is_none() {
            lock_wallet_creation(&mut *tx).await?;
        }
        let written: Option<Wallet> = match current {
            None => {
                sqlx::query_as(
                    "INSERT INTO wallets (user_id, balance) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO NOTHING RETURNING user_id, balance, version",
                )
                .bind(user_id)
                .bind(balance)
                .fetch_optional(&mut *tx)
                .await?
            }
            Some((_, version)) => {
                sqlx::query_as(
                    "UPDATE wallets SET balance = $2, version = version + 1, updated_at = now()
                 WHERE user_id = $1 AND version = $3 RETURNING user_id, balance, version",
                )
                .bind(user_id)
                .bind(balance)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(wallet) = written else {
            // Created or moved underneath: read again.
            continue;
        };
        let (kind, delta) = match current {
            None => (LedgerKind::Seed, balance),
            Some((before, _)) => (LedgerKind::Correction, balance - before),
        };
        if delta != 0 {
            let reason = match kind {
                LedgerKind::Seed => "wallet created".to_owned(),
                _ => format!("balance set to {balance}"),
            };
            append(&mut *tx, user_id, delta, kind, &reason, None).await?;
        }
        tx.commit().await?;
        return Ok(wallet);
    }
    Err(DbError::TooManyConflicts(MAX_VERSION_RETRIES))
}

/// Credits an existing wallet (versioned UPDATE) with its `credit` ledger
/// row in one transaction; `None` when there is no such wallet.
pub async fn credit(
    pool: &PgPool,
    user_id: i64,
    amount: i64,
    reason: &str,
) -> Result<Option<(Wallet, LedgerEntry)>, DbError> {
    for _ in 0..MAX_VERSION_RETRIES {
        let mut tx = pool.begin().await?;
        let Some((_, version)) = versioned_state(&mut *tx, user_id).await? else {
            return Ok(None);
        };
        let Some(wallet) = add_versioned(&mut *tx, user_id, amount, version).await? else {
            continue;
        };
        let entry = append(&mut *tx, user_id, amount, LedgerKind::Credit, reason, None).await?;
        tx.commit().await?;
        return Ok(Some((wallet, entry)));
    }
    Err(DbError::TooManyConflicts(MAX_VERSION_RETRIES))
}

/// Rounds of read-then-versioned-UPDATE one balance change tries.
const MAX_VERSION_RETRIES: u32 = 32;

/// A wallet's balance and version.
pub async fn versioned_state(
    db: impl PgExecutor<'_>,
    user_id: i64,
) -> Result<Option<(i64, i64)>, DbError> {
    Ok(
        sqlx::query_as("SELECT balance, version FROM wallets WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(db)
            .await?,
    )
}

/// Adds `amount` to a wallet if it is still at `version`; `None` when it moved.
pub async fn add_versioned(
    db: impl PgExecutor<'_>,
    user_id: i64,
    amount: i64,
    version: i64,
) -> Result<Option<Wallet>, DbError> {
    Ok(sqlx::query_as(
        "UPDATE wallets SET balance = balance + $2, version = version + 1, updated_at = now()
         WHERE user_id = $1 AND version = $3 RETURNING user_id, balance, version",
    )
    .bind(user_id)
    .bind(amount)
    .bind(version)
    .fetch_optional(db)
    .await?)
}

/// Creates or sets `count` wallets from `first_user_id` in one statement,
/// with a `seed` ledger row of each wallet's difference, in one transaction.
pub async fn seed(
    pool: &PgPool,
    first_user_id: i64,
    count: i64,
    balance: i64,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    lock_wallet_creation(&mut *tx).await?;
    // The existing wallets of the range are locked, so the differences
    // booked next are the ones the upsert makes.
    sqlx::query(
        "SELECT count(*) FROM (SELECT 1 FROM wallets
         WHERE user_id BETWEEN $1::bigint AND $1::bigint + ($2::bigint - 1) FOR UPDATE) AS locked",
    )
    .bind(first_user_id)
    .bind(count)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO wallet_ledger (user_id, delta, kind, reason)
         SELECT g, $3 - coalesce(w.balance, 0), 'seed', 'seeded'
         FROM generate_series($1::bigint, $1::bigint + ($2::bigint - 1)) AS g
         LEFT JOIN wallets w ON w.user_id = g
         WHERE $3 <> coalesce(w.balance, 0)",
    )
    .bind(first_user_id)
    .bind(count)
    .bind(balance)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "INSERT INTO wallets (user_id, balance)
         SELECT g, $3 FROM generate_series($1::bigint, $1::bigint + ($2::bigint - 1)) AS g
         ON CONFLICT (user_id) DO UPDATE SET balance = EXCLUDED.balance, version = wallets.version + 1, updated_at = now()",
    )
    .bind(first_user_id)
    .bind(count)
    .bind(balance)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done)
}

/// Serializes the creation of wallets (seeding, a first `PUT`): a wallet
/// created by another transaction between the booking of a difference and
/// the upsert would leave the ledger off by that wallet's balance.
async fn lock_wallet_creation(db: impl PgExecutor<'_>) -> Result<(), DbError> {
    sqlx::query("SELECT pg_advisory_xact_lock(7253418812345001)")
        .execute(db)
        .await?;
    Ok(())
}

/// Why a wallet's balance moved (`wallet_ledger.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    Seed,
    Credit,
    Correction,
    Purchase,
    Refund,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Credit => "credit",
            Self::Correction => "correction",
            Self::Purchase => "purchase",
            Self::Refund => "refund",
        }
    }
}

/// One immutable movement of a wallet.
#[derive(Clone, Debug, FromRow, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: i64,
    pub delta: i64,
    pub kind: String,
    pub reason: String,
    pub order_no: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

const LEDGER_COLUMNS: &str = "id, user_id, delta, kind, reason, order_no, created_at";

/// Appends one ledger row (in the caller's transaction, with the balance change).
pub async fn append(
    db: impl PgExecutor<'_>,
    user_id: i64,
    delta: i64,
    kind: LedgerKind,
    reason: &str,
    order_no: Option<Uuid>,
) -> Result<LedgerEntry, DbError> {
    let sql = format!(
        "INSERT INTO wallet_ledger (user_id, delta, kind, reason, order_no)
         VALUES ($1, $2, $3, $4, $5) RETURNING {LEDGER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(user_id)
        .bind(delta)
        .bind(kind.as_str())
        .bind(reason)
        .bind(order_no)
        .fetch_one(db)
        .await?)
}

/// A page of a wallet's movements, oldest first, after ledger id `after`.
pub async fn ledger_page(
    db: impl PgExecutor<'_>,
    user_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<LedgerEntry>, DbError> {
    let sql = format!(
        "SELECT {LEDGER_COLUMNS} FROM wallet_ledger WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    );
    Ok(sqlx::query_as(&sql)
        .bind(user_id)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?)
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
