//! The NATS JetStream side of the relay: the stream, and publishing a batch
//! of outbox rows with the broker's acknowledgements awaited.

use std::{future::IntoFuture, time::Duration};

use async_nats::jetstream::{self, stream::StorageType};
use futures_util::future::join_all;

use crate::db::outbox::Unpublished;

/// How long the broker remembers a message id: a row republished within it
/// (the relay died between the ack and the stamp, an ack was lost) is
/// dropped by the broker as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Longest wait for one publish to be sent and acknowledged.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// A publish that failed; the rows from it on are published again later.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("nats: ensuring stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("nats: publishing outbox row {id}: {source}")]
    Publish {
        id: i64,
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("nats: the batch's publishes did not finish within {0:?}")]
    TimedOut(Duration),
}

/// The message id the broker deduplicates on: one per order state.
pub fn message_id(row: &Unpublished) -> String {
    format!("{}:{}", row.order_no, row.kind)
}

/// `<prefix>.<event_id>.<kind without "order.">`, e.g.
/// `seckill.orders.42.confirmed`.
pub fn subject(prefix: &str, row: &Unpublished) -> String {
    let kind = row.kind.strip_prefix("order.").unwrap_or(&row.kind);
    format!("{prefix}.{}.{kind}", row.event_id)
}

/// A JetStream context and the stream the relay publishes to.
pub struct Broker {
    js: jetstream::Context,
    stream: String,
    subject_prefix: String,
    /// The stream was ensured since the last error.
    ready: bool,
}

impl Broker {
    /// A client that connects (and reconnects) in the background: creating
    /// it never waits for NATS.
    pub async fn connect(url: &str, stream: &str, subject_prefix: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("seckill-outbox-relay")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(PUBLISH_TIMEOUT);
        Ok(Self {
            js,
            stream: stream.to_owned(),
            subject_prefix: subject_prefix.to_owned(),
            ready: false,
        })
    }

    /// Creates the stream if it is missing (file storage, the duplicate
    /// window above); an existing stream is left as the operator set it.
    async fn ensure_stream(&mut self) -> Result<(), BrokerError> {
        if self.ready {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some("seckill order events from the transactional outbox".into()),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|source| BrokerError::Stream {
                stream: self.stream.clone(),
                source,
            })?;
        self.ready = true;
        Ok(())
    }

    /// Publishes the rows in order (pipelined on one connection) and waits
    /// for every acknowledgement. Returns the ids the broker stored (or
    /// recognised as duplicates), in order up to the first failure, and that
    /// failure. Rows after a failed one may have been stored too: they are
    /// not reported, so they are published again and deduplicated.
    pub async fn publish(&mut self, rows: &[Unpublished]) -> (Vec<i64>, Option<BrokerError>) {
        if let Err(err) = self.ensure_stream().await {
            return (Vec::new(), Some(err));
        }
        let batch = async {
            let mut pending = Vec::with_capacity(rows.len());
            let mut send_error = None;
            for row in rows {
                let publish = jetstream::context::Publish::build()
                    .payload(row.payload.clone().into())
                    .message_id(message_id(row))
                    .header("Seckill-Outbox-Id", row.id.to_string().as_str())
                    .header("Seckill-Kind", row.kind.as_str());
                match self
                    .js
                    .send_publish(subject(&self.subject_prefix, row), publish)
                    .await
                {
                    Ok(ack) => pending.push(ack.into_future()),
                    Err(source) => {
                        send_error = Some(BrokerError::Publish { id: row.id, source });
                        break;
                    }
                }
            }
            let acks = join_all(pending).await;
            let mut stored = Vec::with_capacity(acks.len());
            for (row, ack) in rows.iter().zip(acks) {
                match ack {
                    Ok(ack) => {
                        if ack.duplicate {
                            metrics::counter!("seckill_outbox_duplicates_total").increment(1);
                        }
                        stored.push(row.id);
                    }
                    Err(source) => {
                        return (stored, Some(BrokerError::Publish { id: row.id, source }))
                    }
                }
            }
            (stored, send_error)
        };
        let limit = PUBLISH_TIMEOUT * 2;
        let (stored, error) = tokio::time::timeout(limit, batch)
            .await
            .unwrap_or_else(|_| (Vec::new(), Some(BrokerError::TimedOut(limit))));
        if error.is_some() {
            // NATS may have restarted without its store: ensure the stream again.
            self.ready = false;
        }
        (stored, error)
    }
}
