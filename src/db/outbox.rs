//! `outbox`: order events owed to the broker, written in the transaction
//! that changed the order, read and stamped by the relay ([`crate::outbox`]).
//!
//! Every payload is built here, in SQL, from the same values the order row
//! got, so what the broker carries is exactly what was committed.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::DbError;

/// The kinds of order events. Adding one is one line here (and the code
/// that writes it); the table and the relay take any `order.*` kind.
pub mod kind {
    pub const CONFIRMED: &str = "order.confirmed";
    pub const FAILED: &str = "order.failed";
    /// Cancelled by its shopper (refunded, units back).
    pub const CANCELLED: &str = "order.cancelled";
    /// Refunded by an operator (units back).
    pub const REFUNDED: &str = "order.refunded";
}

/// The payload of an order event, as SQL (the columns of `src`, an order
/// row or its UNNEST twin: order_no, event_id, user_id, quantity, amount,
/// status, failure_reason, created_at; and `kind`).
const PAYLOAD_SQL: &str = "jsonb_build_object(
    'kind', kind, 'order_no', order_no, 'event_id', event_id, 'user_id', user_id,
    'quantity', quantity, 'amount', amount, 'status', status,
    'failure_reason', failure_reason, 'accepted_at', created_at,
    'committed_at', clock_timestamp())";

/// Records the events of a writer batch: one `order.batch` row per event
/// with the order_nos the batch inserted, in one statement. Each order's
/// state and payload are read back from its row by the relay (see the
/// migration `outbox_batch_rows`).
pub async fn record_batch(
    db: impl PgExecutor<'_>,
    inserted: &[(i64, Uuid)],
) -> Result<(), DbError> {
    if inserted.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, kind, order_nos)
         SELECT e, 'order.batch', array_agg(o ORDER BY n)
         FROM UNNEST($1::int8[], $2::uuid[]) WITH ORDINALITY AS t(e, o, n)
         GROUP BY e ORDER BY e",
    )
    .bind(inserted.iter().map(|(e, _)| *e).collect::<Vec<_>>())
    .bind(inserted.iter().map(|(_, o)| *o).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}

/// Records an order's change of state as its row now stands, in the
/// transaction that made it (a cancellation or a refund).
pub async fn record_order_now(
    db: impl PgExecutor<'_>,
    order_no: Uuid,
    kind: &str,
) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO outbox (order_no, event_id, kind, payload)
         SELECT order_no, event_id, kind, {PAYLOAD_SQL}
         FROM (SELECT *, $2::text AS kind FROM orders WHERE order_no = $1) src"
    );
    sqlx::query(&sql)
        .bind(order_no)
        .bind(kind)
        .execute(db)
        .await?;
    Ok(())
}

/// The `INSERT ... RETURNING` of one order row, wrapped so that its outbox
/// row is written by the same statement, only when the order was: a CTE
/// named `ins` must return the order's columns (see [`PAYLOAD_SQL`]).
pub(super) fn with_event_of_inserted(insert_returning_order: &str, kind: &str) -> String {
    format!(
        "WITH ins AS ({insert_returning_order}),
              ev AS (INSERT INTO outbox (order_no, event_id, kind, payload)
                     SELECT order_no, event_id, kind, {PAYLOAD_SQL}
                     FROM (SELECT *, '{kind}'::text AS kind FROM ins) src
                     RETURNING 1)
         SELECT count(*) FROM ins"
    )
}

/// One order event the relay owes the broker (a row, or one order of a
/// writer batch's row).
#[derive(Clone, Debug)]
pub struct Unpublished {
    /// The outbox row it comes from.
    pub id: i64,
    pub order_no: Uuid,
    pub event_id: i64,
    pub kind: String,
    /// The JSON payload, as text (published as is).
    pub payload: String,
}

/// A row the relay still owes the broker: one order event, or a writer
/// batch's (`order_nos`), which [`batch_events`] expands.
#[derive(Clone, Debug, FromRow)]
pub struct UnpublishedRow {
    pub id: i64,
    pub event_id: i64,
    pub kind: String,
    pub order_no: Option<Uuid>,
    /// The JSON payload, as text (published as is).
    pub payload: Option<String>,
    pub order_nos: Option<Vec<Uuid>>,
}

/// The oldest unpublished rows, in id order.
pub async fn unpublished(
    db: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<UnpublishedRow>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, event_id, kind, order_no, payload::text AS payload, order_nos FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// What a writer batch committed for one order: its event's payload fields.
#[derive(Clone, Debug, FromRow)]
pub struct PersistedOrder {
    pub order_no: Uuid,
    pub event_id: i64,
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub failure_reason: Option<String>,
    /// When Redis accepted it.
    pub created_at: DateTime<Utc>,
    /// When the writer's statement inserted it (the batch's commit follows).
    pub persisted_at: DateTime<Utc>,
}

impl PersistedOrder {
    /// `order.confirmed` or `order.failed`: how the writer persisted it (a
    /// later cancellation or refund is an event of its own).
    pub fn kind(&self) -> &'static str {
        match self.failure_reason {
            None => kind::CONFIRMED,
            Some(_) => kind::FAILED,
        }
    }

    /// The event's JSON payload, with the fields and values of
    /// `outbox_events` (timestamps in RFC 3339, UTC, microseconds). Written
    /// out directly: the relay builds one per order it publishes.
    pub fn payload(&self) -> String {
        use std::fmt::Write;
        let kind = self.kind();
        let status = kind.strip_prefix("order.").unwrap_or(kind);
        let mut out = String::with_capacity(320);
        let mut uuid = Uuid::encode_buffer();
        let reason = match &self.failure_reason {
            None => "null".to_owned(),
            Some(r) => serde_json::to_string(r).expect("a string serializes"),
        };
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"kind":"{kind}","order_no":"{}","event_id":{},"user_id":{},"quantity":{},"amount":{},"status":"{status}","failure_reason":{reason},"accepted_at":""#,
            self.order_no.hyphenated().encode_lower(&mut uuid),
            self.event_id,
            self.user_id,
            self.quantity,
            self.amount,
        );
        push_rfc3339_micros(&mut out, &self.created_at);
        out.push_str(r#"","committed_at":""#);
        push_rfc3339_micros(&mut out, &self.persisted_at);
        out.push_str(r#""}"#);
        out
    }
}

/// `2026-12-07T22:40:00.123456Z`, digit by digit (the relay writes two per
/// event; the formatting machinery cost more than the rest of the payload).
fn push_rfc3339_micros(out: &mut String, at: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    fn digits(out: &mut String, value: u32, width: u32) {
        for place in (0..width).rev() {
            let digit = (value / 10u32.pow(place)) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
    }
    // Years outside 0..=9999 do not occur in a sale (Postgres refuses them
    // for orders); chrono's own formatting keeps them exact if they did.
    if !(0..=9999).contains(&at.year()) {
        out.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        return;
    }
    digits(out, at.year() as u32, 4);
    out.push('-');
    digits(out, at.month(), 2);
    out.push('-');
    digits(out, at.day(), 2);
    out.push('T');
    digits(out, at.hour(), 2);
    out.push(':');
    digits(out, at.minute(), 2);
    out.push(':');
    digits(out, at.second(), 2);
    out.push('.');
    digits(out, at.timestamp_subsec_micros().min(999_999), 6);
    out.push('Z');
}

/// The orders of writer batches' rows, in one statement.
pub async fn batch_events(
    db: impl PgExecutor<'_>,
    order_nos: &[Uuid],
) -> Result<Vec<PersistedOrder>, DbError> {
    Ok(sqlx::query_as(
        "SELECT order_no, event_id, user_id, quantity, amount, failure_reason, created_at, persisted_at
         FROM orders WHERE order_no = ANY($1)",
    )
    .bind(order_nos)
    .fetch_all(db)
    .await?)
}

/// Stamps rows the broker acknowledged.
pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Most unpublished rows [`backlog`] counts: past it the figure is a floor,
/// and the cost of a measure stays bounded (a relay switched off for days).
pub const BACKLOG_COUNT_CAP: i64 = 100_000;

/// What the relay owes: unpublished order events (counted over at most
/// [`BACKLOG_COUNT_CAP`] rows) and the age of the oldest, in seconds. Both
/// walk the partial index of unpublished rows only.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<(i64, f64), DbError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT coalesce(sum(coalesce(cardinality(order_nos), 1)), 0)::int8
                 FROM (SELECT order_nos FROM outbox WHERE published_at IS NULL LIMIT $1) t),
                coalesce((SELECT extract(epoch FROM now() - created_at)::float8 FROM outbox
                          WHERE published_at IS NULL ORDER BY id LIMIT 1), 0)",
    )
    .bind(BACKLOG_COUNT_CAP)
    .fetch_one(db)
    .await?)
}

/// Deletes, among the `chunk` oldest rows, those published before
/// `published_before`; returns how many. Bounded work per call (the head of
/// the primary key), so the caller loops while it deletes a full chunk.
pub async fn delete_published(
    db: impl PgExecutor<'_>,
    published_before: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $2)
         AND published_at < $1",
    )
    .bind(published_before)
    .bind(chunk)
    .execute(db)
    .await?
    .rows_affected())
}

/// Every event of one sale, in id order (tests and the load-test verdict).
pub async fn of_event(
    db: impl PgExecutor<'_>,
    event_id: i64,
) -> Result<Vec<(i64, Uuid, String, Option<DateTime<Utc>>)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, order_no, kind, published_at FROM outbox_events WHERE event_id = $1 ORDER BY id, order_no",
    )
    .bind(event_id)
    .fetch_all(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_order_event_carries_the_fields_of_outbox_events() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T22:40:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut order = PersistedOrder {
            order_no: Uuid::nil(),
            event_id: 7,
            user_id: 42,
            quantity: 2,
            amount: 300,
            failure_reason: None,
            created_at: at,
            persisted_at: at,
        };
        let confirmed: serde_json::Value = serde_json::from_str(&order.payload()).unwrap();
        assert_eq!(
            confirmed,
            serde_json::json!({
                "kind": "order.confirmed", "order_no": Uuid::nil(), "event_id": 7, "user_id": 42,
                "quantity": 2, "amount": 300, "status": "confirmed", "failure_reason": null,
                "accepted_at": "2026-12-07T22:40:00.123456Z", "committed_at": "2026-12-07T22:40:00.123456Z",
            })
        );
        for secs in [0i64, 951_782_400, 1_796_684_647, 4_102_444_799] {
            for nanos in [0u32, 1_000, 999_999_000, 123_456_789] {
                let at = DateTime::from_timestamp(secs, nanos).unwrap();
                let mut written = String::new();
                push_rfc3339_micros(&mut written, &at);
                assert_eq!(
                    written,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                );
            }
        }
        order.failure_reason = Some("insufficient_funds".into());
        let failed: serde_json::Value = serde_json::from_str(&order.payload()).unwrap();
        assert_eq!(
            (order.kind(), &failed["status"], &failed["failure_reason"]),
            (kind::FAILED, &"failed".into(), &"insufficient_funds".into())
        );
    }
}
