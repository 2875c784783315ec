//! Orders for operators: `GET /admin/orders` (filtered, keyset-paged) and
//! `GET /admin/events/{id}/orders/export?format=csv|ndjson`, a whole sale's
//! orders streamed from a Postgres row stream into the response body: rows
//! are written out as Postgres sends them, through a small bounded channel,
//! so the engine's memory stays flat whatever the number of orders.

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    extract::{AppQuery, Id, Operator},
    wallets::page_limit,
};
use crate::{
    db::{
        self,
        orders::{Order, OrderFilter},
    },
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// Order statuses an operator can filter by.
const STATUSES: [&str; 4] = ["confirmed", "failed", "cancelled", "refunded"];

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(minimum = 1, nullable = false)]
    event_id: Option<i64>,
    #[param(minimum = 1, nullable = false)]
    user_id: Option<i64>,
    /// `confirmed`, `failed`, `cancelled` or `refunded`.
    #[param(value_type = Option<String>, nullable = false, pattern = "^(confirmed|failed|cancelled|refunded)$")]
    status: Option<String>,
    /// Orders per page, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    limit: Option<i64>,
    /// The previous page's `next_after` (an order_no).
    #[param(nullable = false)]
    after: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// `after` for the next page; absent on the last one.
    pub next_after: Option<Uuid>,
}

#[utoipa::path(
    get, path = "/admin/orders", operation_id = "list_orders", tag = "operator",
    security(("admin_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of persisted orders, by order_no", body = OrderPage),
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
) -> Result<Json<OrderPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::invalid(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    if query.event_id.is_some_and(|id| id < 1) || query.user_id.is_some_and(|id| id < 1) {
        return Err(ApiError::invalid("ids must be in 1..=9223372036854775807"));
    }
    let filter = OrderFilter {
        event_id: query.event_id,
        user_id: query.user_id,
        status: query.status,
    };
    let orders = db::orders::list_filtered(&app.db, &filter, query.after, limit).await?;
    let next_after = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.order_no))
        .flatten();
    Ok(Json(OrderPage { orders, next_after }))
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Csv,
    Ndjson,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default) or `ndjson`.
    #[serde(default)]
    format: ExportFormat,
}

/// Bytes gathered before a chunk is sent to the client.
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks in flight between the Postgres reader and the client: the whole
/// buffer of an export is at most this many chunks.
const CHUNKS_IN_FLIGHT: usize = 4;

const CSV_HEADER: &str =
    "order_no,event_id,user_id,quantity,amount,status,failure_reason,created_at\n";

#[utoipa::path(
    get, path = "/admin/events/{id}/orders/export", operation_id = "export_orders", tag = "operator",
    security(("admin_token" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "The event id"),
        ExportQuery,
    ),
    responses(
        (status = 200, description = "Every persisted order of the sale, streamed: CSV with a header line, or one JSON order per line",
            content(
                (String = "text/csv; charset=utf-8", example = "order_no,event_id,user_id,quantity,amount,status,failure_reason,created_at\n"),
                (Order = "application/x-ndjson"),
            ),
            headers(("Content-Disposition" = String, description = "attachment; filename=\"event-{id}-orders.csv\" (or .ndjson)"))),
        (status = 400, description = "`invalid_request`: a malformed id or query", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong token", body = ErrorBody),
        (status = 403, description = "`forbidden`: a shopper's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or Postgres unreachable", body = ErrorBody),
    ),
)]
pub async fn export(
    State(app): State<AppState>,
    _: Operator,
    Id(event_id): Id,
    AppQuery(query): AppQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    db::events::get(&app.db, event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    // Taken before answering: no connection, a 503 instead of a cut stream.
    let conn = app.db.acquire().await.map_err(db::DbError::from)?;
    let format = query.format;
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut conn = conn;
        let mut rows = db::orders::stream_for_event(&mut *conn, event_id);
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 512);
        if format == ExportFormat::Csv {
            chunk.extend_from_slice(CSV_HEADER.as_bytes());
        }
        let mut count: u64 = 0;
        while let Some(row) = rows.next().await {
            match row {
                Ok(order) => {
                    write_order(&mut chunk, &order, format);
                    count += 1;
                }
                Err(err) => {
                    tracing::warn!(error = %err, event_id, "order export failed mid-stream");
                    let _ = sender.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            }
            if chunk.len() >= CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 512));
                if sender.send(Ok(Bytes::from(full))).await.is_err() {
                    return; // the client went away
                }
            }
        }
        if !chunk.is_empty() {
            let _ = sender.send(Ok(Bytes::from(chunk))).await;
        }
        tracing::info!(event_id, orders = count, "order export finished");
    });
    let body = Body::from_stream(futures_util::stream::unfold(receiver, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    }));
    let (content_type, extension) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let disposition = format!("attachment; filename=\"event-{event_id}-orders.{extension}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// One order as a CSV or NDJSON line.
fn write_order(out: &mut Vec<u8>, order: &Order, format: ExportFormat) {
    use std::io::Write;
    match format {
        ExportFormat::Ndjson => {
            serde_json::to_writer(&mut *out, order).expect("an order serializes");
            out.push(b'\n');
        }
        ExportFormat::Csv => {
            let _ = write!(
                out,
                "{},{},{},{},{},{},",
                order.order_no,
                order.event_id,
                order.user_id,
                order.quantity,
                order.amount,
                order.status
            );
            if let Some(reason) = &order.failure_reason {
                write_csv_field(out, reason);
            }
            let _ = writeln!(out, ",{}", order.created_at.to_rfc3339());
        }
    }
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
fn write_csv_field(out: &mut Vec<u8>, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}
