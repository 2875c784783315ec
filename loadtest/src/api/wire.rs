//! The engine's JSON as this client reads and writes it (SPEC §3): only the
//! fields the load generator uses, with defaults where an engine may omit one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /admin/events` body.
#[derive(Debug, Serialize)]
pub struct NewEvent<'a> {
    pub name: &'a str,
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Seconds after a purchase its shopper may cancel it (absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_window_seconds: Option<i64>,
    /// Stock buckets of the event (absent: the engine's default, one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_buckets: Option<u32>,
}

/// `GET /admin/events/{id}`: the event with live figures.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminEvent {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock_total: i64,
    pub stock_left: i64,
    pub per_user_limit: i64,
    pub status: String,
    pub sold: i64,
    pub pending: i64,
    pub failed: i64,
    pub confirmed_amount: i64,
}

/// `GET /admin/events/{id}/invariants`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Invariants {
    #[serde(default)]
    pub event_id: i64,
    pub ok: bool,
    #[serde(default)]
    pub checks: Vec<InvariantCheck>,
}

/// One check of the engine's invariant checker.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InvariantCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// `GET /api/orders/{order_no}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub order_no: Uuid,
    pub user_id: i64,
    #[serde(default)]
    pub status: String,
}
