//! Operator routes: create and preheat sales, fund wallets, watch figures,
//! check invariants, run the reconciler.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    events::EventView,
    extract::{AppJson, AppQuery, Id, Operator},
};
use crate::{
    db::{self, events::Event, wallets::Wallet},
    error::ApiError,
    lifecycle::{MAX_SALE_VALUE, MAX_STOCK},
    loading,
    state::AppState,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    name: String,
    price: i64,
    stock: i64,
    per_user_limit: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    /// Seconds after a purchase during which its shopper may cancel it;
    /// absent or null: no cancellation (operators can still refund).
    #[serde(default)]
    cancel_window_seconds: Option<i32>,
}

/// Upper bounds that keep every amount exact in Lua (doubles) and i64.
pub(super) const MAX_PRICE: i64 = 1_000_000_000_000;
pub(super) const MAX_LIMIT: i32 = 1_000;
const MAX_BALANCE: i64 = 1_000_000_000_000_000;
const MAX_SEED: i64 = 1_000_000;
/// Longest cancellation window: 30 days.
const MAX_CANCEL_WINDOW: i32 = 30 * 24 * 3600;

/// The operator's view: the public view plus live figures.
#[derive(Debug, Serialize)]
pub struct AdminEventView {
    #[serde(flatten)]
    pub public: EventView,
    /// Units in confirmed orders (Postgres).
    pub sold: i64,
    /// Intents accepted by Redis and not yet persisted.
    pub pending: i64,
    pub pending_quantity: i64,
    pub confirmed: i64,
    pub failed: i64,
    pub confirmed_amount: i64,
    pub preheated: bool,
    pub channel_depth: usize,
    /// Seconds after a purchase its shopper may cancel it (`null`: never).
    pub cancel_window_seconds: Option<i32>,
    /// `scheduled`, `running`, `paused`, `ended` or `sold_out`: the filter
    /// of `GET /admin/events?status=` (see [`super::lifecycle::Lifecycle`]).
    pub lifecycle: &'static str,
    /// When an operator paused the sale (`null`: not paused).
    pub paused_at: Option<DateTime<Utc>>,
    /// The definition's version: `PATCH` sends it back (stale: 409).
    pub version: i64,
}

pub async fn event_view(app: &AppState, event: &Event) -> Result<AdminEventView, ApiError> {
    // Redis first, Postgres after: an intent leaves the ledger only once its
    // order is committed, so every accepted purchase is counted in one of
    // the two (read together, a batch committed in between was in neither).
    // The counters: O(1) in Redis, however large the sale.
    let state = app.redis.sale_state(event.id).await?;
    let figures = db::orders::figures(&app.db, event.id).await?;
    Ok(view_of(app, event, state, figures))
}

/// The view from a Redis read (`state.lua`) and Postgres's figures taken
/// after it (see [`event_view`]).
pub fn view_of(
    app: &AppState,
    event: &Event,
    state: crate::redis::SaleState,
    figures: db::orders::EventFigures,
) -> AdminEventView {
    let stock = state.stock_left.filter(|_| state.loaded);
    AdminEventView {
        public: EventView::new(event, stock),
        sold: figures.confirmed_quantity,
        pending: state.pending,
        pending_quantity: state.pending_units,
        confirmed: figures.confirmed_orders,
        failed: figures.failed_orders,
        confirmed_amount: figures.confirmed_amount,
        preheated: stock.is_some(),
        channel_depth: app.writers.depth(),
        cancel_window_seconds: event.cancel_window_seconds,
        lifecycle: super::lifecycle::Lifecycle::of(event, stock, Utc::now()).as_str(),
        paused_at: event.paused_at,
        version: event.version,
    }
}

pub async fn create_event(
    State(app): State<AppState>,
    _: Operator,
    AppJson(body): AppJson<CreateEvent>,
) -> Result<(StatusCode, Json<AdminEventView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::unprocessable("name must be 1..=200 characters"));
    }
    if !(0..=MAX_PRICE).contains(&body.price) {
        return Err(ApiError::unprocessable(format!(
            "price must be in 0..={MAX_PRICE} (minor units)"
        )));
    }
    if !(0..=MAX_STOCK).contains(&body.stock) {
        return Err(ApiError::unprocessable(format!(
            "stock must be in 0..={MAX_STOCK}"
        )));
    }
    if !(1..=MAX_LIMIT).contains(&body.per_user_limit) {
        return Err(ApiError::unprocessable(format!(
            "per_user_limit must be in 1..={MAX_LIMIT}"
        )));
    }
    if body
        .price
        .checked_mul(body.stock)
        .is_none_or(|v| v > MAX_SALE_VALUE)
    {
        return Err(ApiError::unprocessable(format!(
            "price × stock must be at most {MAX_SALE_VALUE}, so every sum of the sale is exact"
        )));
    }
    if body.ends_at <= body.starts_at {
        return Err(ApiError::unprocessable("ends_at must be after starts_at"));
    }
    let new = db::events::NewEvent {
        name,
        price: body.price,
        stock_total: body.stock,
        per_user_limit: body.per_user_limit,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
    };
    if body
        .cancel_window_seconds
        .is_some_and(|s| !(1..=MAX_CANCEL_WINDOW).contains(&s))
    {
        return Err(ApiError::unprocessable(format!(
            "cancel_window_seconds must be in 1..={MAX_CANCEL_WINDOW}, or absent for no cancellation"
        )));
    }
    let mut event = db::events::insert(&app.db, &new).await?;
    if body.cancel_window_seconds.is_some() {
        event = db::events::set_cancel_window(&app.db, event.id, body.cancel_window_seconds)
            .await?
            .unwrap_or(event);
    }
    app.catalog.created(event.id);
    Ok((StatusCode::CREATED, Json(event_view(&app, &event).await?)))
}

pub async fn show_event(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
) -> Result<Json<AdminEventView>, ApiError> {
    let event = db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    Ok(Json(event_view(&app, &event).await?))
}

#[derive(Debug, Deserialize, Default)]
pub struct PreheatQuery {
    #[serde(default)]
    force: bool,
}

pub async fn preheat(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
    AppQuery(query): AppQuery<PreheatQuery>,
) -> Result<Json<Value>, ApiError> {
    let event = db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    if Utc::now() >= event.ends_at {
        return Err(ApiError::conflict("not_active", "the sale has ended"));
    }
    let response = if query.force {
        let (stock_left, pending) = loading::rebuild(&app.db, &app.redis, &event).await?;
        json!({"event_id": id, "loaded": true, "rebuilt": true, "stock_left": stock_left, "pending_intents": pending})
    } else {
        let loaded = loading::preheat(&app.db, &app.redis, &event).await?;
        json!({"event_id": id, "loaded": loaded, "rebuilt": false, "stock_left": app.redis.stock_left(id).await?})
    };
    db::events::mark_preheated(&app.db, id).await?;
    app.catalog.clear_sold_out(id);
    app.redis.publish_stock_back(id).await?;
    Ok(Json(response))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWallet {
    balance: i64,
}

fn check_balance(balance: i64) -> Result<(), ApiError> {
    if (0..=MAX_BALANCE).contains(&balance) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "balance must be in 0..={MAX_BALANCE}"
        )))
    }
}

pub async fn set_wallet(
    State(app): State<AppState>,
    _: Operator,
    Id(user_id): Id,
    AppJson(body): AppJson<SetWallet>,
) -> Result<Json<Wallet>, ApiError> {
    check_balance(body.balance)?;
    Ok(Json(
        db::wallets::set_balance(&app.db, user_id, body.balance).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedWallets {
    first_user_id: i64,
    count: i64,
    balance: i64,
}

pub async fn seed_wallets(
    State(app): State<AppState>,
    _: Operator,
    AppJson(body): AppJson<SeedWallets>,
) -> Result<Json<Value>, ApiError> {
    check_balance(body.balance)?;
    if !(1..=MAX_SEED).contains(&body.count) {
        return Err(ApiError::unprocessable(format!(
            "count must be in 1..={MAX_SEED}"
        )));
    }
    if body.first_user_id < 1 || body.first_user_id.checked_add(body.count - 1).is_none() {
        return Err(ApiError::unprocessable(
            "user ids must stay in 1..=9223372036854775807",
        ));
    }
    let created = db::wallets::seed(&app.db, body.first_user_id, body.count, body.balance).await?;
    Ok(Json(
        json!({"created": created, "first_user_id": body.first_user_id, "count": body.count, "balance": body.balance}),
    ))
}

pub async fn show_wallet(
    State(app): State<AppState>,
    _: Operator,
    Id(user_id): Id,
) -> Result<Json<Wallet>, ApiError> {
    Ok(Json(
        db::wallets::get(&app.db, user_id)
            .await?
            .ok_or(ApiError::NotFound("wallet"))?,
    ))
}

pub async fn reconcile(
    State(app): State<AppState>,
    _: Operator,
) -> Result<Json<crate::reconciler::Report>, ApiError> {
    Ok(Json(app.reconciler.run_now().await?))
}

pub async fn invariants(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
) -> Result<Json<crate::invariants::InvariantReport>, ApiError> {
    let event = db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    Ok(Json(
        crate::invariants::check_event(&app.db, &app.redis, &event).await?,
    ))
}
