//! The order intent: a purchase Redis accepted, on its way to Postgres.
//!
//! `purchase.lua` writes it into the event's ledger in the same atomic step
//! that takes the stock, as `"user_id:quantity:amount:accepted_ms"`
//! ([`LedgerEntry`], the one place that format is read in Rust); the HTTP
//! handler hands it to the writers; the reconciler replays it from the ledger
//! when no writer persisted it; once persisted it is [`Settled`]. Every layer
//! speaks of it with these types.

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::bucket::Bucket;

/// An accepted purchase on its way to Postgres.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intent {
    pub order_no: Uuid,
    pub event_id: i64,
    /// The event's stock buckets: the intent lives in the shopper's home one.
    pub buckets: u16,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub accepted_at: DateTime<Utc>,
}

impl Intent {
    /// The bucket whose ledger holds this intent.
    pub fn bucket(&self) -> Bucket {
        Bucket::home(self.event_id, self.buckets, self.user_id)
    }
}

/// Why an order failed; stored in `orders.failure_reason`.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
pub const NO_WALLET: &str = "no_wallet";
/// Its units do not exist: accepted by a Redis that then lost it with no
/// stock left to take again, or by a Redis back from an older state beyond
/// what Postgres had left unsold.
pub const STOCK_LOST: &str = "stock_lost";
/// A keyed retry resumed an attempt that had no answer, and Redis refused it:
/// the order is void, so a copy of it still in flight can never confirm it.
pub const NOT_ACCEPTED: &str = "not_accepted";

/// An order's `status` as shoppers see it: `pending` while its intent is in
/// the ledger, then what `orders.status` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Failed,
    /// Cancelled by its shopper within the event's window (money and units back).
    Cancelled,
    /// Refunded by an operator (money and units back).
    Refunded,
}

/// How a persisted order ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Confirmed,
    /// Failed, with the reason stored in `orders.failure_reason`.
    Failed(String),
}

/// One pending intent as the ledger holds it (the event and order_no are
/// the hash's key and field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    /// Redis server time of the acceptance.
    pub accepted_ms: i64,
}

impl LedgerEntry {
    /// Reads `"user_id:quantity:amount:accepted_ms"`; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let entry = Self {
            user_id: parts.next()?.parse().ok()?,
            quantity: parts.next()?.parse().ok()?,
            amount: parts.next()?.parse().ok()?,
            accepted_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(entry)
    }

    /// The intent this entry records, in an event of `buckets` buckets.
    pub fn intent(&self, order_no: Uuid, event_id: i64, buckets: u16) -> Intent {
        Intent {
            order_no,
            event_id,
            buckets,
            user_id: self.user_id,
            quantity: self.quantity,
            amount: self.amount,
            accepted_at: from_millis(self.accepted_ms),
        }
    }
}

/// Redis milliseconds as a time; a value that is no time (0 from a replayed
/// script whose entry is gone) reads as now.
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .filter(|_| ms > 0)
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_entry_round_trip_and_rejects_garbage() {
        assert_eq!(
            LedgerEntry::parse("7:2:300:1700000000000"),
            Some(LedgerEntry {
                user_id: 7,
                quantity: 2,
                amount: 300,
                accepted_ms: 1_700_000_000_000
            })
        );
        assert_eq!(LedgerEntry::parse("7:2:300"), None);
        assert_eq!(LedgerEntry::parse("7:2:300:1:9"), None);
        assert_eq!(LedgerEntry::parse("7:2:1e+14:1"), None, "not an integer");
    }

    #[test]
    fn millis_that_are_no_time_read_as_now() {
        assert_eq!(from_millis(1_700_000_000_000).timestamp(), 1_700_000_000);
        assert!((Utc::now() - from_millis(0)).num_seconds().abs() < 5);
    }
}
