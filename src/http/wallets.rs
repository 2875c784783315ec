//! `POST /admin/wallets/{user_id}/credit` and `GET
//! /admin/wallets/{user_id}/ledger`: credits as immutable ledger rows with a
//! reason, and every movement of a wallet, keyset-paged.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{AppJson, AppQuery, Id, Operator},
    refunds::check_reason,
};
use crate::{
    db::{
        self,
        wallets::{LedgerEntry, Wallet},
    },
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// Largest single credit (the balance bound of `PUT /admin/wallets`).
const MAX_CREDIT: i64 = 1_000_000_000_000_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    /// Minor units, 1..=10^15 (and the balance stays at most 10^15).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    amount: i64,
    /// 1..=500 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Credited {
    pub wallet: Wallet,
    pub entry: LedgerEntry,
}

#[utoipa::path(
    post, path = "/admin/wallets/{user_id}/credit", operation_id = "credit_wallet", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("user_id" = i64, Path, minimum = 1, description = "The shopper's user id"),
    ),
    request_body(content = CreditBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Credited, with its ledger row", body = Credited),
        (status = 400, description = "`invalid_request`: malformed JSON or id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such wallet", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: amount or reason out of range, the balance would exceed 10^15, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Ledger id to continue after (the previous page's `next_after`).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// Rows per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
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

#[utoipa::path(
    get, path = "/admin/wallets/{user_id}/ledger", operation_id = "wallet_ledger", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("user_id" = i64, Path, minimum = 1, description = "The shopper's user id"),
        LedgerQuery,
    ),
    responses(
        (status = 200, description = "The wallet's balance and a page of its movements, oldest first", body = LedgerPage),
        (status = 400, description = "`invalid_request`: a malformed id or query", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such wallet", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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
