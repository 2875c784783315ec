//! `POST /admin/wallets/{user_id}/credit` and `GET
//! /admin/wallets/{user_id}/ledger`: credits as immutable ledger rows with a
//! reason, and every movement of a wallet, keyset-paged.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};

use super::{
    extract::{AppJson, AppQuery, Id, Operator},
    refunds::check_reason,
};
use crate::{
    db::{
        self,
        wallets::{LedgerEntry, Wallet},
    },
    error::ApiError,
    state::AppState,
};

/// Largest single credit (the balance bound of `PUT /admin/wallets`).
const MAX_CREDIT: i64 = 1_000_000_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    amount: i64,
    reason: String,
}

#[derive(Debug, Serialize)]
pub struct Credited {
    pub wallet: Wallet,
    pub entry: LedgerEntry,
}

pub async fn credit(
    State(app): State<AppState>,
    _: Operator,
    Id(user_id): Id,
    AppJson(body): AppJson<CreditBody>,
) -> Result<Json<Credited>, ApiError> {
    if !(1..=MAX_CREDIT).contains(&body.amount) {
        return Err(ApiError::unprocessable(format!(
            "amount must be in 1..={MAX_CREDIT}"
        )));
    }
    let reason = check_reason(&body.reason)?;
    let wallet = db::wallets::get(&app.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("wallet"))?;
    if wallet.balance > MAX_CREDIT - body.amount {
        return Err(ApiError::unprocessable(format!(
            "the balance would exceed {MAX_CREDIT}"
        )));
    }
    let (wallet, entry) = db::wallets::credit(&app.db, user_id, body.amount, reason)
        .await?
        .ok_or(ApiError::NotFound("wallet"))?;
    Ok(Json(Credited { wallet, entry }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Ledger id to continue after (the previous page's `next_after`).
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct LedgerPage {
    pub user_id: i64,
    pub balance: i64,
    pub entries: Vec<LedgerEntry>,
    /// `after` for the next page; absent on the last one.
    pub next_after: Option<i64>,
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// A page limit from a query (default 100, at most 1000).
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(format!(
            "limit must be in 1..={MAX_PAGE}"
        ))),
    }
}

pub async fn ledger(
    State(app): State<AppState>,
    _: Operator,
    Id(user_id): Id,
    AppQuery(query): AppQuery<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    if query.after < 0 {
        return Err(ApiError::invalid("after must be a ledger id (>= 0)"));
    }
    let wallet = db::wallets::get(&app.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("wallet"))?;
    let entries = db::wallets::ledger_page(&app.db, user_id, query.after, limit).await?;
    let next_after = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(LedgerPage {
        user_id,
        balance: wallet.balance,
        entries,
        next_after,
    }))
}
