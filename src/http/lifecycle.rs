//! Operator routes of the sale lifecycle: the event list, versioned edits,
//! the kill switch (end now, pause, resume) and stock adjustments. The
//! fenced steps themselves are [`crate::lifecycle`]; this module checks the
//! input, answers, and keeps this process's catalog in step at once (other
//! processes' catalogs follow within [`crate::catalog::DEFINITION_REFRESH`];
//! purchases never depend on it: Redis decides).

use axum::{extract::State, http::HeaderMap, Json};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    admin::{event_view, view_of, AdminEventView, MAX_LIMIT, MAX_PRICE},
    extract::{AppJson, AppQuery, Id, Operator},
};
use crate::{
    db::{self, adjustments::Adjustment, events::Event, events::Phase},
    error::{ApiError, ErrorBody, ErrorCode},
    idempotency,
    lifecycle::{self, Edit, LifecycleError, MAX_STOCK},
    state::AppState,
};

/// Where a sale stands, as the operator's list filters it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Before `starts_at`, not paused.
    Scheduled,
    /// Started, not ended, not paused, stock left (or not loaded in Redis yet).
    Running,
    /// Paused by an operator and not ended.
    Paused,
    /// At or after `ends_at` (ended by its window or by `POST …/end`).
    Ended,
    /// Started, not ended, not paused, and Redis holds no unit left.
    SoldOut,
}

impl Lifecycle {
    /// Ended wins over paused, paused over the rest.
    pub fn of(event: &Event, stock_left: Option<i64>, now: DateTime<Utc>) -> Self {
        if now >= event.ends_at {
            Self::Ended
        } else if event.paused_at.is_some() {
            Self::Paused
        } else if now < event.starts_at {
            Self::Scheduled
        } else if stock_left.is_some_and(|left| left <= 0) {
            Self::SoldOut
        } else {
            Self::Running
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Ended => "ended",
            Self::SoldOut => "sold_out",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            Self::Scheduled,
            Self::Running,
            Self::Paused,
            Self::Ended,
            Self::SoldOut,
        ]
        .into_iter()
        .find(|l| l.as_str() == raw)
    }

    /// The Postgres filter that holds every event in this state (running and
    /// sold out are told apart by the live stock).
    fn phase(self) -> Phase {
        match self {
            Self::Scheduled => Phase::Scheduled,
            Self::Running | Self::SoldOut => Phase::Open,
            Self::Paused => Phase::Paused,
            Self::Ended => Phase::Ended,
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(err: LifecycleError) -> Self {
        let with = |code: ErrorCode, message: String, field: &str, value: Value| {
            let mut extra = Map::new();
            extra.insert(field.into(), value);
            ApiError::Conflict {
                code,
                message,
                extra,
            }
        };
        match err {
            LifecycleError::NotFound => ApiError::NotFound("event"),
            LifecycleError::VersionConflict { current } => with(
                ErrorCode::VersionConflict,
                format!("the event changed: it is at version {current}; read it again"),
                "version",
                json!(current),
            ),
            LifecycleError::SaleStarted(field) => with(
                ErrorCode::SaleStarted,
                format!("{field} cannot change once the sale has started"),
                "field",
                json!(field),
            ),
            LifecycleError::SaleEnded => {
                ApiError::conflict(ErrorCode::SaleEnded, "the sale has ended")
            }
            LifecycleError::InsufficientStock { stock_left } => with(
                ErrorCode::InsufficientStock,
                format!("only {stock_left} units are left unsold"),
                "stock_left",
                json!(stock_left),
            ),
            LifecycleError::NotLoaded => ApiError::Unavailable(err.to_string()),
            LifecycleError::KeyReused => ApiError::IdempotencyKeyReused,
            LifecycleError::Invalid(message) => ApiError::unprocessable(message),
            LifecycleError::Redis(err) => err.into(),
            LifecycleError::Db(err) => err.into(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the events in this lifecycle state.
    #[param(value_type = Option<Lifecycle>, nullable = false)]
    status: Option<String>,
    /// Events per page, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    limit: Option<i64>,
    /// The previous page's `next`: events with a larger id.
    #[param(minimum = 0, nullable = false)]
    after: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    events: Vec<AdminEventView>,
    /// Pass as `after` for the next page; `null` when the list is over.
    next: Option<i64>,
}

const DEFAULT_PAGE: i64 = 50;
const MOST_PER_PAGE: i64 = 200;
/// A running / sold-out page examines at most this many pages of candidates
/// (their stock is in Redis); it may then hold fewer than `limit` events,
/// with `next` set.
const CANDIDATE_PAGES: usize = 4;

/// `GET /admin/events?status=&limit=&after=`: keyset-paged by id, oldest
/// first, each event with its live figures: O(1) in Redis per event, and
/// one grouped Postgres statement for the page's order figures.
#[utoipa::path(
    get, path = "/admin/events", operation_id = "list_events", tag = "operator",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events, oldest first, with live figures", body = EventPage),
        (status = 400, description = "`invalid_request`: a malformed or out-of-range query", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn list(
    State(app): State<AppState>,
    _: Operator,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MOST_PER_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be in 1..={MOST_PER_PAGE}"
        )));
    }
    let mut after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid("after must be an event id"));
    }
    let wanted = match query.status.as_deref() {
        None => None,
        Some(raw) => Some(Lifecycle::parse(raw).ok_or_else(|| {
            ApiError::invalid("status must be one of scheduled, running, paused, ended, sold_out")
        })?),
    };
    // Each candidate's Redis counters (O(1)), then Postgres's figures of
    // the page's events in one statement.
    let mut kept = Vec::new();
    let mut next = Some(after);
    for _ in 0..CANDIDATE_PAGES {
        let page = db::events::page(&app.db, wanted.map(Lifecycle::phase), after, limit).await?;
        let exhausted = (page.len() as i64) < limit;
        for event in page {
            after = event.id;
            let state = app
                .redis
                .event_state(crate::loading::event_buckets(&event))
                .await?;
            let stock = state.stock_left.filter(|_| state.loaded);
            if wanted.is_none_or(|w| w == Lifecycle::of(&event, stock, Utc::now())) {
                kept.push((event, state));
                if kept.len() as i64 == limit {
                    break;
                }
            }
        }
        next = Some(after);
        if kept.len() as i64 == limit {
            break;
        }
        if exhausted {
            next = None;
            break;
        }
    }
    let ids: Vec<i64> = kept.iter().map(|(e, _)| e.id).collect();
    let figures = db::orders::figures_of(&app.db, &ids).await?;
    let events = kept
        .into_iter()
        .map(|(event, state)| {
            let figures = figures.get(&event.id).copied().unwrap_or_default();
            view_of(&app, &event, state, figures)
        })
        .collect();
    Ok(Json(EventPage { events, next }))
}

/// The fields to change; absent ones stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// The version read (`GET /admin/events/{id}`); another: 409 `version_conflict`.
    version: i64,
    /// 1..=200 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    name: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    price: Option<i64>,
    #[schema(minimum = 1, maximum = 1_000)]
    per_user_limit: Option<i32>,
    /// Before the sale starts only; in years 1970..=9999.
    starts_at: Option<DateTime<Utc>>,
    /// In years 1970..=9999.
    ends_at: Option<DateTime<Utc>>,
    /// The new total, before the sale starts only (after: `POST …/stock`).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    stock: Option<i64>,
}

/// `PATCH /admin/events/{id}`: a versioned edit; `version` is the one the
/// operator read (`GET /admin/events/{id}`).
#[utoipa::path(
    patch, path = "/admin/events/{id}", operation_id = "edit_event", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    request_body(content = EditBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Edited (`version` moved by 1 when the definition changed)", body = AdminEventView),
        (status = 400, description = "`invalid_request`: malformed JSON or id", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 409, description = "`version_conflict` (with `version`), `sale_started` (with `field`) or `sale_ended`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a field out of range, not an object, an unknown field", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn edit(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
    AppJson(body): AppJson<EditBody>,
) -> Result<Json<AdminEventView>, ApiError> {
    if body
        .name
        .as_deref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        return Err(ApiError::unprocessable(
            "name must be 1..=200 characters, none of them a control character",
        ));
    }
    let name = body.name.as_deref().map(str::trim);
    if name.is_some_and(|n| n.is_empty() || n.chars().count() > 200) {
        return Err(ApiError::unprocessable("name must be 1..=200 characters"));
    }
    if body.price.is_some_and(|p| !(0..=MAX_PRICE).contains(&p)) {
        return Err(ApiError::unprocessable(format!(
            "price must be in 0..={MAX_PRICE} (minor units)"
        )));
    }
    if body
        .per_user_limit
        .is_some_and(|l| !(1..=MAX_LIMIT).contains(&l))
    {
        return Err(ApiError::unprocessable(format!(
            "per_user_limit must be in 1..={MAX_LIMIT}"
        )));
    }
    if ![body.starts_at, body.ends_at]
        .iter()
        .flatten()
        .all(|t| (1970..=9999).contains(&t.year()))
    {
        // As for a new event: Postgres, RFC 3339 and the scripts' Unix
        // milliseconds all hold these years.
        return Err(ApiError::unprocessable(
            "starts_at and ends_at must be in the years 1970..=9999",
        ));
    }
    if body.stock.is_some_and(|s| !(0..=MAX_STOCK).contains(&s)) {
        return Err(ApiError::unprocessable(format!(
            "stock must be in 0..={MAX_STOCK}"
        )));
    }
    let edit = Edit {
        version: body.version,
        name: name.map(str::to_owned),
        price: body.price,
        per_user_limit: body.per_user_limit,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        stock: body.stock,
    };
    let event = lifecycle::edit(&app.db, &app.redis, id, &edit).await?;
    count("edit");
    changed(&app, &event, body.stock.is_some()).await?;
    Ok(Json(event_view(&app, &event).await?))
}

/// `POST /admin/events/{id}/end`: the sale ends now (Redis's clock); the
/// answer's `ends_at` is that instant. Ending an ended sale changes nothing.
#[utoipa::path(
    post, path = "/admin/events/{id}/end", operation_id = "end_event", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    responses(
        (status = 200, description = "Ended now (or already ended: unchanged)", body = AdminEventView),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn end(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
) -> Result<Json<AdminEventView>, ApiError> {
    let (event, _) = lifecycle::end_now(&app.db, &app.redis, id).await?;
    count("end");
    changed(&app, &event, false).await?;
    Ok(Json(event_view(&app, &event).await?))
}

/// `POST /admin/events/{id}/pause`: purchases answer 409 `sale_paused`
/// from `paused_at` (Redis's clock) until a resume.
#[utoipa::path(
    post, path = "/admin/events/{id}/pause", operation_id = "pause_event", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    responses(
        (status = 200, description = "Paused (idempotent)", body = AdminEventView),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 409, description = "`sale_ended`", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn pause(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
) -> Result<Json<AdminEventView>, ApiError> {
    let event = lifecycle::set_paused(&app.db, &app.redis, id, true).await?;
    count("pause");
    changed(&app, &event, false).await?;
    Ok(Json(event_view(&app, &event).await?))
}

/// `POST /admin/events/{id}/resume`.
#[utoipa::path(
    post, path = "/admin/events/{id}/resume", operation_id = "resume_event", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
    ),
    responses(
        (status = 200, description = "Resumed (idempotent)", body = AdminEventView),
        (status = 400, description = "`invalid_request`: the id is not an integer in 1..=2^63−1", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 409, description = "`sale_ended`", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn resume(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
) -> Result<Json<AdminEventView>, ApiError> {
    let event = lifecycle::set_paused(&app.db, &app.redis, id, false).await?;
    count("resume");
    changed(&app, &event, true).await?;
    Ok(Json(event_view(&app, &event).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    /// Units added (> 0) or withdrawn (< 0); never 0.
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    delta: i64,
    /// 1..=500 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdjustmentAnswer {
    adjustment: Adjustment,
    event: AdminEventView,
}

/// `POST /admin/events/{id}/stock` `{"delta", "reason"}`, optional
/// `Idempotency-Key` (a retry answers what the first call did, applied
/// once). 200 applied; 409 `insufficient_stock` when it withdraws more than
/// is left unsold (recorded as refused).
#[utoipa::path(
    post, path = "/admin/events/{id}/stock", operation_id = "adjust_stock", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "1..=255 printable ASCII characters: a retry answers what the first call did, applied once"),
    ),
    request_body(content = StockBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied", body = AdjustmentAnswer),
        (status = 400, description = "`invalid_request`: malformed JSON, id or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 409, description = "`insufficient_stock` (with `stock_left`) or `sale_ended`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request` (delta 0 or out of range, reason empty or too long, unknown field) or `idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable, or the sale not loaded in Redis", body = ErrorBody),
    ),
)]
pub async fn adjust_stock(
    State(app): State<AppState>,
    _: Operator,
    Id(id): Id,
    headers: HeaderMap,
    AppJson(body): AppJson<StockBody>,
) -> Result<Json<AdjustmentAnswer>, ApiError> {
    if body.delta == 0 || body.delta.unsigned_abs() > MAX_STOCK as u64 {
        return Err(ApiError::unprocessable(format!(
            "delta must be a non-zero integer in -{MAX_STOCK}..={MAX_STOCK}"
        )));
    }
    let reason = super::refunds::check_reason(&body.reason)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(raw) if idempotency::valid_key(raw.as_bytes()) => raw.to_str().ok(),
        Some(_) => {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1..=255 printable ASCII characters",
            ))
        }
    };
    let adjustment = lifecycle::adjust(&app.db, &app.redis, id, body.delta, reason, key).await?;
    count(match adjustment.state.as_str() {
        "applied" => "stock_applied",
        _ => "stock_refused",
    });
    match adjustment.refusal.as_deref() {
        None => {}
        Some("insufficient_stock") => {
            return Err(LifecycleError::InsufficientStock {
                stock_left: adjustment.stock_left_after.unwrap_or(0),
            }
            .into())
        }
        Some("not_loaded") => return Err(LifecycleError::NotLoaded.into()),
        Some(other) => {
            return Err(ApiError::Internal(format!(
                "adjustment {} refused: {other}",
                adjustment.id
            )))
        }
    }
    let event = db::events::get(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    changed(&app, &event, adjustment.delta > 0).await?;
    Ok(Json(AdjustmentAnswer {
        event: event_view(&app, &event).await?,
        adjustment,
    }))
}

/// Counts an operator's lifecycle call that changed (or settled) something:
/// `seckill_sale_controls_total{action}`.
fn count(action: &'static str) {
    metrics::counter!("seckill_sale_controls_total", "action" => action).increment(1);
}

/// This process's catalog takes the new definition at once; when units may
/// be on sale again, every process clears its local sold-out flag.
async fn changed(app: &AppState, event: &Event, stock_back: bool) -> Result<(), ApiError> {
    app.catalog.refresh(event.clone());
    if stock_back {
        app.catalog.clear_sold_out(event.id);
        app.redis.publish_stock_back(event.id).await?;
    }
    Ok(())
}
