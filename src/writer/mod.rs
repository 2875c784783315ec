//! The hand-off from the purchase path to Postgres: a bounded async-channel
//! and a pool of writer workers that drain it in batches.
//!
//! The channel is a fast path, not the record: every intent in it is already
//! durable in the event's Redis ledger. When the channel is full, or the
//! process dies with intents in it, the reconciler replays them from the
//! ledger through the same [`persist`] path.

pub mod admission;
pub mod persist;
pub mod settle;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_channel::{Receiver, Sender, TrySendError};
use sqlx::PgPool;
use tokio::{sync::oneshot, task::JoinSet};
use uuid::Uuid;

pub use persist::BatchResult;
pub use settle::{settle, Settlement};

use crate::{
    config::WriterSettings,
    intent::{Intent, Settled},
    redis::Redis,
};

/// One accepted intent on its way to a writer, and who waits for its commit.
struct Job {
    intent: Intent,
    /// Set under `SECKILL_ACK=durable`: told how the order ended once committed.
    settled: Option<oneshot::Sender<Settled>>,
}

/// The sending side, held by the HTTP handlers.
#[derive(Clone)]
pub struct WriterQueue {
    sender: Sender<Job>,
    /// Intents taken from the channel and not yet committed or given up.
    in_flight: Arc<AtomicUsize>,
}

impl WriterQueue {
    /// Hands an accepted intent to the writers without waiting. False when
    /// the channel is full or closed: the intent stays in the ledger for replay.
    pub fn offer(&self, intent: Intent) -> bool {
        match self.sender.try_send(Job {
            intent,
            settled: None,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                metrics::counter!("seckill_channel_full_total").increment(1);
                false
            }
        }
    }

    /// Hands an intent to the writers and waits until its batch is committed
    /// (`SECKILL_ACK=durable`). `None` when that did not happen within
    /// `within` (full channel, Postgres down): the intent stays in the ledger
    /// and is persisted later, so the caller's answer is "unknown", never "no".
    pub async fn persist_and_wait(&self, intent: Intent, within: Duration) -> Option<Settled> {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + within;
        let job = Job {
            intent,
            settled: Some(tx),
        };
        tokio::time::timeout_at(deadline, self.sender.send(job))
            .await
            .ok()?
            .ok()?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()
    }

    pub fn depth(&self) -> usize {
        self.sender.len()
    }

    /// Intents this process holds in memory: queued or in a batch being written.
    pub fn held(&self) -> usize {
        self.sender.len() + self.in_flight.load(Ordering::Acquire)
    }

    /// Stops intake; the workers drain what is queued, then exit.
    pub fn close(&self) {
        self.sender.close();
    }
}

/// Starts the workers on `runtime`; they exit once the queue is closed and drained.
pub fn spawn(
    settings: WriterSettings,
    db: PgPool,
    redis: Redis,
    runtime: &tokio::runtime::Handle,
) -> (WriterQueue, JoinSet<()>) {
    let (sender, receiver) = async_channel::bounded(settings.channel_capacity);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..settings.workers {
        let (rx, db, redis, held) = (
            receiver.clone(),
            db.clone(),
            redis.clone(),
            in_flight.clone(),
        );
        workers.spawn_on(
            async move { run_worker(worker, rx, db, redis, settings, held).await },
            runtime,
        );
    }
    (WriterQueue { sender, in_flight }, workers)
}

async fn run_worker(
    worker: usize,
    rx: Receiver<Job>,
    db: PgPool,
    redis: Redis,
    settings: WriterSettings,
    in_flight: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(settings.batch_max);
    let mut waiting = Vec::new();
    while let Some(()) = next_batch(&rx, &mut batch, &mut waiting, settings, &in_flight).await {
        metrics::gauge!("seckill_channel_depth").set(rx.len() as f64);
        metrics::histogram!("seckill_writer_batch_size").record(batch.len() as f64);
        let mut outcomes = persist_with_retry(&db, &redis, &batch, worker).await;
        for (order_no, tx) in waiting.drain(..) {
            // A waiter whose order did not persist is dropped: it answers "unknown".
            if let Some(settled) = outcomes.remove(&order_no) {
                let _ = tx.send(settled);
            }
        }
        in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        batch.clear();
    }
    tracing::debug!(worker, "writer drained and stopped");
}

/// Waits for one intent, then takes more until the batch is full, the
/// channel is momentarily empty past the linger time, or it is closed.
async fn next_batch(
    rx: &Receiver<Job>,
    batch: &mut Vec<Intent>,
    waiting: &mut Vec<(Uuid, oneshot::Sender<Settled>)>,
    settings: WriterSettings,
    in_flight: &AtomicUsize,
) -> Option<()> {
    let take = |batch: &mut Vec<Intent>, waiting: &mut Vec<_>, job: Job| {
        in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(tx) = job.settled {
            waiting.push((job.intent.order_no, tx));
        }
        batch.push(job.intent);
    };
    take(batch, waiting, rx.recv().await.ok()?);
    let deadline = tokio::time::Instant::now() + settings.batch_linger;
    while batch.len() < settings.batch_max {
        match rx.try_recv() {
            Ok(job) => take(batch, waiting, job),
            Err(async_channel::TryRecvError::Closed) => break,
            Err(async_channel::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(job)) => take(batch, waiting, job),
                    _ => break,
                }
            }
        }
    }
    Some(())
}

/// Persists and settles one batch, retrying transient failures with backoff.
/// A batch that keeps failing stays in the Redis ledger: nothing is lost, the
/// reconciler replays it later. A batch that fails for good is split, so one
/// bad intent cannot hold the others back. Returns how each order that was
/// persisted ended; an order missing from it was not persisted.
pub async fn persist_with_retry(
    db: &PgPool,
    redis: &Redis,
    batch: &[Intent],
    worker: usize,
) -> HashMap<Uuid, Settled> {
    match persist_retrying(db, redis, batch, worker).await {
        Attempt::Done(outcomes) => outcomes,
        Attempt::Rejected if batch.len() > 1 => {
            let mut outcomes = HashMap::with_capacity(batch.len());
            for intent in batch {
                if let Attempt::Done(one) =
                    persist_retrying(db, redis, std::slice::from_ref(intent), worker).await
                {
                    outcomes.extend(one);
                }
            }
            outcomes
        }
        Attempt::Rejected | Attempt::GaveUp => HashMap::new(),
    }
}

enum Attempt {
    Done(HashMap<Uuid, Settled>),
    /// Postgres refused it for good (a constraint): retrying will not help.
    Rejected,
    /// Still failing after `RETRY_FOR`; left to the reconciler.
    GaveUp,
}
/// How long a batch is retried before it is left to the ledger replay.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Longest pause between two tries (the reconciler's rebuild waits longer
/// than this for writers to go quiet).
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);

async fn persist_retrying(db: &PgPool, redis: &Redis, batch: &[Intent], worker: usize) -> Attempt {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut delay = Duration::from_millis(20);
    loop {
        let error = match persist::persist_batch(db, batch, Some(redis)).await {
            Ok(result) => {
                metrics::counter!("seckill_orders_persisted_total", "status" => "confirmed")
                    .increment(result.confirmed.len() as u64);
                metrics::counter!("seckill_orders_persisted_total", "status" => "failed")
                    .increment(result.failed.len() as u64);
                let settlements = result.settlements();
                if let Err(err) = settle(redis, &settlements, &result.oversold).await {
                    // Committed in Postgres; the reconciler acks/releases later.
                    tracing::warn!(worker, error = %err, "batch committed but not settled in redis; left to the reconciler");
                }
                return Attempt::Done(
                    settlements
                        .into_iter()
                        .map(|s| (s.order_no, s.settled))
                        .collect(),
                );
            }
            Err(err) if !err.is_transient() => {
                tracing::error!(worker, size = batch.len(), error = %err, "postgres refused the batch");
                return Attempt::Rejected;
            }
            Err(err) => err.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(
                worker,
                size = batch.len(),
                error,
                "batch not persisted; left in the ledger for the reconciler"
            );
            return Attempt::GaveUp;
        }
        metrics::counter!("seckill_writer_batch_retries_total").increment(1);
        tracing::warn!(worker, size = batch.len(), error, "batch failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
