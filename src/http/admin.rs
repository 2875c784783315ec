//! Operator routes: create and preheat sales, fund wallets, watch figures,
//! check invariants, run the reconciler.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    events::EventView,
    extract::{AppJson, AppQuery, Id, Operator},
};
use crate::{
    db::{self, events::Event, wallets::Wallet},
    error::{ApiError, ErrorBody, ErrorCode},
    lifecycle::{MAX_SALE_VALUE, MAX_STOCK},
    loading,
    state::AppState,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    /// 1..=200 characters once trimmed, no control characters (Postgres
    /// text cannot hold NUL).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    name: String,
    /// Minor units, 0..=10^12; price × stock at most 2^53 − 1.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    price: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: i64,
    #[schema(minimum = 1, maximum = 1_000)]
    per_user_limit: i32,
    /// RFC 3339, in years 1970..=9999.
    starts_at: DateTime<Utc>,
    /// After `starts_at`, in years 1970..=9999.
    ends_at: DateTime<Utc>,
    /// Seconds after a purchase during which its shopper may cancel it;
    /// absent or null: no cancellation (operators can still refund).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2_592_000)]
    cancel_window_seconds: Option<i32>,
    /// Redis stock buckets, 1..=64 (default 1): the stock split across this
    /// many hash tags, so one hot item spreads over the masters of a Redis
    /// Cluster. Fixed for the life of the event.
    #[serde(default = "one_bucket")]
    #[schema(minimum = 1, maximum = 64, default = 1)]
    stock_buckets: i32,
}

fn one_bucket() -> i32 {
    1
}

/// Upper bounds that keep every amount exact in Lua (doubles) and i64.
pub(super) const MAX_PRICE: i64 = 1_000_000_000_000;
pub(super) const MAX_LIMIT: i32 = 1_000;
const MAX_BALANCE: i64 = 1_000_000_000_000_000;
const MAX_SEED: i64 = 1_000_000;
/// Longest cancellation window: 30 days.
const MAX_CANCEL_WINDOW: i32 = 30 * 24 * 3600;

/// The operator's view: the public view plus live figures.
#[derive(Debug, Serialize, ToSchema)]
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
    pub lifecycle: super::lifecycle::Lifecycle,
    /// When an operator paused the sale (`null`: not paused).
    pub paused_at: Option<DateTime<Utc>>,
    /// The definition's version: `PATCH` sends it back (stale: 409).
    pub version: i64,
    /// Redis stock buckets (1: the whole sale on one hash tag).
    pub stock_buckets: i32,
    /// Each bucket's figures, for an event of several (empty otherwise).
    pub buckets: Vec<BucketView>,
}

pub async fn event_view(app: &AppState, event: &Event) -> Result<AdminEventView, ApiError> {
    // Redis first, Postgres after: an intent leaves the ledger only once its
    // order is committed, so every accepted purchase is counted in one of
    // the two (read together, a batch committed in between was in neither).
    // The counters: O(1) in Redis, however large the sale.
    let buckets = app
        .redis
        .bucket_states(loading::event_buckets(event))
        .await?;
    let state =
        crate::redis::SaleState::merged(&buckets.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    let figures = db::orders::figures(&app.db, event.id).await?;
    let mut view = view_of(app, event, state, figures);
    if event.stock_buckets > 1 {
        view.buckets = buckets.iter().map(|(b, s)| BucketView::of(*b, s)).collect();
    }
    Ok(view)
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
        lifecycle: super::lifecycle::Lifecycle::of(event, stock, Utc::now()),
        paused_at: event.paused_at,
        version: event.version,
        stock_buckets: event.stock_buckets,
        buckets: Vec::new(),
    }
}

/// One stock bucket as Redis holds it (an event of several buckets).
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketView {
    pub index: u16,
    /// The hash tag of the bucket's keys, and its cluster slot.
    pub hash_tag: String,
    pub slot: u16,
    pub loaded: bool,
    pub stock_left: Option<i64>,
    /// Units this bucket is accountable for: its stock and what its
    /// shoppers hold (moves with transfers).
    pub total: i64,
    /// Units held by this bucket's shoppers' non-failed orders.
    pub held: Option<i64>,
    pub pending: i64,
    pub moved_in: i64,
    pub moved_out: i64,
    /// Units given to another bucket whose arrival is not confirmed yet.
    pub in_flight: i64,
}

impl BucketView {
    pub fn of(bucket: crate::redis::Bucket, state: &crate::redis::SaleState) -> Self {
        Self {
            index: bucket.index,
            hash_tag: bucket.hash_tag(),
            slot: bucket.slot(),
            loaded: state.loaded,
            stock_left: state.stock_left,
            total: state.total,
            held: state.held,
            pending: state.pending,
            moved_in: state.moved_in,
            moved_out: state.moved_out,
            in_flight: state.in_flight,
        }
    }
}

#[utoipa::path(
    post, path = "/admin/events", operation_id = "create_event", tag = "operator",
    security(("admin_token" = [])),
    request_body(content = CreateEvent, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (not preheated yet)", body = AdminEventView, links(
            ("ShowEvent" = (operation_id = "admin_show_event", parameters(("id" = "$response.body#/id")))),
            ("Preheat" = (operation_id = "preheat", parameters(("id" = "$response.body#/id")))),
            ("Invariants" = (operation_id = "invariants", parameters(("id" = "$response.body#/id")))),
            ("PublicView" = (operation_id = "show_event", parameters(("id" = "$response.body#/id")))),
            ("Purchase" = (operation_id = "purchase", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "`invalid_request`: malformed JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a field out of range, not an object, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn create_event(
    State(app): State<AppState>,
    _: Operator,
    AppJson(body): AppJson<CreateEvent>,
) -> Result<(StatusCode, Json<AdminEventView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "name must be 1..=200 characters, none of them a control character",
        ));
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
    if ![body.starts_at, body.ends_at]
        .iter()
        .all(|t| (1970..=9999).contains(&t.year()))
    {
        // Postgres stores 4713 BC..294276 AD, RFC 3339 writes four-digit
        // years, and the sale scripts take Unix milliseconds.
        return Err(ApiError::unprocessable(
            "starts_at and ends_at must be in the years 1970..=9999",
        ));
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
        stock_buckets: body.stock_buckets,
    };
    if !(1..=crate::redis::MAX_BUCKETS as i32).contains(&body.stock_buckets) {
        return Err(ApiError::unprocessable(format!(
            "stock_buckets must be in 1..={}",
            crate::redis::MAX_BUCKETS
        )));
    }
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

#[utoipa::path(
    get, path = "/admin/events/{id}", operation_id = "admin_show_event", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    responses(
        (status = 200, description = "The event with live figures", body = AdminEventView),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreheatQuery {
    /// Rebuild the sale in Redis from Postgres even though it has orders.
    #[serde(default)]
    force: bool,
}

/// What a preheat did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreheatReport {
    pub event_id: i64,
    /// Whether the sale is in Redis now.
    pub loaded: bool,
    /// `?force=true`: rebuilt from Postgres and the ledger.
    pub rebuilt: bool,
    pub stock_left: Option<i64>,
    /// `?force=true` only: intents still in the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_intents: Option<i64>,
}

#[utoipa::path(
    post, path = "/admin/events/{id}/preheat", operation_id = "preheat", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
        PreheatQuery,
    ),
    responses(
        (status = 200, description = "Loaded into Redis (idempotent)", body = PreheatReport, links(
            ("ShowEvent" = (operation_id = "admin_show_event", parameters(("id" = "$response.body#/event_id")))),
            ("PublicView" = (operation_id = "show_event", parameters(("id" = "$response.body#/event_id")))),
            ("Purchase" = (operation_id = "purchase", parameters(("id" = "$response.body#/event_id")))),
        )),
        (status = 400, description = "`invalid_request`: a malformed id or query", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 409, description = "`not_active` (the sale has ended) or `has_orders` (without `?force=true`)", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn preheat(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
    AppQuery(query): AppQuery<PreheatQuery>,
) -> Result<Json<PreheatReport>, ApiError> {
    let event = db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    if Utc::now() >= event.ends_at {
        return Err(ApiError::conflict(
            ErrorCode::NotActive,
            "the sale has ended",
        ));
    }
    let response = if query.force {
        let (stock_left, pending) = loading::rebuild(&app.db, &app.redis, &event).await?;
        PreheatReport {
            event_id: id,
            loaded: true,
            rebuilt: true,
            stock_left: Some(stock_left),
            pending_intents: Some(pending),
        }
    } else {
        let loaded = loading::preheat(&app.db, &app.redis, &event).await?;
        PreheatReport {
            event_id: id,
            loaded,
            rebuilt: false,
            stock_left: app
                .redis
                .event_stock_left(loading::event_buckets(&event))
                .await?,
            pending_intents: None,
        }
    };
    db::events::mark_preheated(&app.db, id).await?;
    app.catalog.clear_sold_out(id);
    app.redis.publish_stock_back(id).await?;
    Ok(Json(response))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetWallet {
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
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

#[utoipa::path(
    put, path = "/admin/wallets/{user_id}", operation_id = "set_wallet", tag = "operator",
    security(("admin_token" = [])),
    params(("user_id" = i64, Path, minimum = 1, description = "The shopper's user id")),
    request_body(content = SetWallet, content_type = "application/json"),
    responses(
        (status = 200, description = "Created or set (the version moves by 1)", body = Wallet, links(
            ("ShowWallet" = (operation_id = "show_wallet", parameters(("user_id" = "$response.body#/user_id")))),
        )),
        (status = 400, description = "`invalid_request`: malformed JSON or id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a field out of range, not an object, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedWallets {
    /// The first of `count` consecutive user ids.
    #[schema(minimum = 1)]
    first_user_id: i64,
    #[schema(minimum = 1, maximum = 1_000_000)]
    count: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    balance: i64,
}

/// What a seed did: wallets that already existed are left as they were.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeedReport {
    /// Wallets created (the others existed).
    pub created: u64,
    pub first_user_id: i64,
    pub count: i64,
    pub balance: i64,
}

#[utoipa::path(
    post, path = "/admin/wallets/seed", operation_id = "seed_wallets", tag = "operator",
    security(("admin_token" = [])),
    request_body(content = SeedWallets, content_type = "application/json"),
    responses(
        (status = 200, description = "Seeded", body = SeedReport, links(
            ("ShowWallet" = (operation_id = "show_wallet", parameters(("user_id" = "$response.body#/first_user_id")))),
        )),
        (status = 400, description = "`invalid_request`: malformed JSON", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a field out of range, not an object, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn seed_wallets(
    State(app): State<AppState>,
    _: Operator,
    AppJson(body): AppJson<SeedWallets>,
) -> Result<Json<SeedReport>, ApiError> {
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
    Ok(Json(SeedReport {
        created,
        first_user_id: body.first_user_id,
        count: body.count,
        balance: body.balance,
    }))
}

#[utoipa::path(
    get, path = "/admin/wallets/{user_id}", operation_id = "show_wallet", tag = "operator",
    security(("admin_token" = [])),
    params(("user_id" = i64, Path, minimum = 1, description = "The shopper's user id")),
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no wallet for this user", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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

#[utoipa::path(
    post, path = "/admin/reconcile", operation_id = "reconcile", tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One reconciler pass, done now", body = crate::reconciler::Report),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 409, description = "`reconciler_busy`: another engine holds the reconciler lock", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn reconcile(
    State(app): State<AppState>,
    _: Operator,
) -> Result<Json<crate::reconciler::Report>, ApiError> {
    Ok(Json(app.reconciler.run_now().await?))
}

#[utoipa::path(
    get, path = "/admin/events/{id}/invariants", operation_id = "invariants", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    responses(
        (status = 200, description = "SPEC §5 checked for the event", body = crate::invariants::InvariantReport),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
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
