//! Reading order events back from the stream, as a downstream consumer
//! would: an ordered pull consumer from the first message. Used by the tests
//! and by `seckill-loadtest`'s verdict to count events per order state.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use uuid::Uuid;

/// One message of the stream.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    /// Position in the stream (the order every consumer sees).
    pub sequence: u64,
    pub subject: String,
    /// `Nats-Msg-Id`: `<order_no>:<kind>`.
    pub message_id: Option<String>,
    pub kind: String,
    pub order_no: Uuid,
    pub event_id: i64,
    pub status: String,
    pub payload: serde_json::Value,
}

/// Every message of `stream` whose subject matches `filter` (e.g.
/// `seckill.orders.42.>`), in stream order. Stops once the consumer reports
/// nothing pending, or after `idle` without a message.
pub async fn read_events(
    url: &str,
    stream: &str,
    filter: &str,
    idle: Duration,
) -> anyhow::Result<Vec<StreamEvent>> {
    let client = async_nats::ConnectOptions::new()
        .name("seckill-outbox-reader")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut events = Vec::new();
    loop {
        let next = match tokio::time::timeout(idle, messages.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(next)) => next?,
        };
        let info = next.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let payload: serde_json::Value = serde_json::from_slice(&next.payload)?;
        let text = |field: &str| payload[field].as_str().unwrap_or_default().to_owned();
        events.push(StreamEvent {
            sequence,
            subject: next.subject.to_string(),
            message_id: next
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string()),
            kind: text("kind"),
            order_no: text("order_no").parse().unwrap_or_default(),
            event_id: payload["event_id"].as_i64().unwrap_or_default(),
            status: text("status"),
            payload,
        });
        if pending == 0 {
            break;
        }
    }
    Ok(events)
}
