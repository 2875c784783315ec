//! The engine's order events, read back from NATS JetStream as a downstream
//! consumer would (an ordered pull consumer on the sale's subjects): exactly
//! one event per persisted order state, `order.confirmed` or `order.failed`
//! as Postgres has it, and none for an order Postgres does not have.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use uuid::Uuid;

use super::{
    check::{sample_list, Check},
    orders::Row,
};
use crate::plan::OrderStream;

const NAME: &str = "order events in NATS: one per persisted order state";
/// How long the relay gets to publish the sale's last events.
const WAIT_FOR_RELAY: Duration = Duration::from_secs(30);

/// Counts the stream's events per (order_no, kind) of one sale.
async fn read(
    target: &OrderStream,
    event_id: i64,
) -> anyhow::Result<HashMap<(Uuid, String), usize>> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(&target.url)
        .await
        .with_context(|| format!("connecting to NATS at {}", target.url))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&target.stream)
        .await
        .with_context(|| format!("stream {}", target.stream))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{}.{event_id}.>", target.subject_prefix),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen: HashMap<(Uuid, String), usize> = HashMap::new();
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(message)) => message?,
        };
        let payload: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let order_no = payload["order_no"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let kind = payload["kind"].as_str().unwrap_or_default().to_owned();
        *seen.entry((order_no, kind)).or_default() += 1;
        let pending = message.info().map(|i| i.pending).unwrap_or(1);
        if pending == 0 {
            break;
        }
    }
    Ok(seen)
}

/// What is off between the stream and Postgres: (missing, doubled, foreign).
/// A failed order owes `order.failed`; any other `order.confirmed`, and a
/// refunded one also its `order.cancelled` / `order.refunded`.
fn compare(
    rows: &HashMap<Uuid, Row>,
    seen: &HashMap<(Uuid, String), usize>,
) -> (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) {
    let kinds = |row: &Row| -> Vec<&'static str> {
        if row.failed {
            vec!["order.failed"]
        } else {
            std::iter::once("order.confirmed")
                .chain(row.refund_event)
                .collect()
        }
    };
    let mut missing = Vec::new();
    let mut doubled = Vec::new();
    for (order_no, row) in rows {
        for kind in kinds(row) {
            match seen.get(&(*order_no, kind.to_owned())) {
                None => missing.push(*order_no),
                Some(n) if *n > 1 => doubled.push(*order_no),
                Some(_) => {}
            }
        }
    }
    let foreign = seen
        .keys()
        .filter(|(o, k)| {
            rows.get(o)
                .is_none_or(|row| !kinds(row).contains(&k.as_str()))
        })
        .map(|(o, _)| *o)
        .collect();
    (missing, doubled, foreign)
}

/// The check, waiting up to [`WAIT_FOR_RELAY`] for events still owed.
pub(super) async fn stream_check(
    target: Option<&OrderStream>,
    event_id: i64,
    rows: &HashMap<Uuid, Row>,
) -> Check {
    let Some(target) = target else {
        return Check::skip(NAME, "client", "--nats-url off".into());
    };
    let started = Instant::now();
    loop {
        let seen = match read(target, event_id).await {
            Ok(seen) => seen,
            Err(err) => {
                return Check::skip(
                    NAME,
                    "client",
                    format!("{err:#} (is the engine's outbox relay on? --nats-url off skips this)"),
                )
            }
        };
        let (missing, doubled, foreign) = compare(rows, &seen);
        let settled = missing.is_empty() || started.elapsed() >= WAIT_FOR_RELAY;
        if !settled {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let events: usize = seen.values().sum();
        let failed = rows.values().filter(|r| r.failed).count();
        let ok = missing.is_empty() && doubled.is_empty() && foreign.is_empty();
        let mut detail = format!(
            "{} orders ({failed} failed) in Postgres, {events} events in stream {} after {:.1}s: {} missing, {} more than once, {} not persisted",
            rows.len(),
            target.stream,
            started.elapsed().as_secs_f64(),
            missing.len(),
            doubled.len(),
            foreign.len()
        );
        for (what, list) in [
            ("missing", &missing),
            ("doubled", &doubled),
            ("foreign", &foreign),
        ] {
            if !list.is_empty() {
                detail.push_str(&format!("; {what}: {}", sample_list(list)));
            }
        }
        return Check::client(NAME, ok, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(failed: bool) -> Row {
        Row {
            user_id: 1,
            quantity: 1,
            amount: 100,
            failed,
            refunded: false,
            refund_event: None,
        }
    }

    #[test]
    fn each_persisted_state_once_and_nothing_else() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let rows = HashMap::from([(a, row(false)), (b, row(true))]);
        let mut seen = HashMap::from([
            ((a, "order.confirmed".to_owned()), 1),
            ((b, "order.failed".to_owned()), 1),
        ]);
        assert_eq!(compare(&rows, &seen), (vec![], vec![], vec![]));
        seen.insert((a, "order.confirmed".to_owned()), 2);
        seen.insert((c, "order.confirmed".to_owned()), 1);
        seen.remove(&(b, "order.failed".to_owned()));
        seen.insert((b, "order.confirmed".to_owned()), 1);
        let (missing, doubled, mut foreign) = compare(&rows, &seen);
        foreign.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!((missing, doubled, foreign), (vec![b], vec![a], want));
    }

    #[test]
    fn a_refunded_order_owes_its_confirmation_and_its_refund() {
        let a = Uuid::new_v4();
        let refunded = Row {
            refunded: true,
            refund_event: Some("order.cancelled"),
            ..row(false)
        };
        let rows = HashMap::from([(a, refunded)]);
        let mut seen = HashMap::from([((a, "order.confirmed".to_owned()), 1)]);
        assert_eq!(
            compare(&rows, &seen),
            (vec![a], vec![], vec![]),
            "the cancellation is owed"
        );
        seen.insert((a, "order.cancelled".to_owned()), 1);
        assert_eq!(compare(&rows, &seen), (vec![], vec![], vec![]));
        seen.insert((a, "order.refunded".to_owned()), 1);
        assert_eq!(
            compare(&rows, &seen),
            (vec![], vec![], vec![a]),
            "not the operator's kind"
        );
    }
}
