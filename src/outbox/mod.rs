//! The outbox relay: publishes the order events the writers committed to the
//! `outbox` table ([`crate::db::outbox`]) to NATS JetStream, at least once,
//! in order per order, with a message id the broker deduplicates on.
//!
//! One relay publishes at a time: it runs in every engine process, and a
//! step runs only while holding the Redis leader lock `outbox_lock` (renewed
//! every step). Several relays would still be safe: a row is published only
//! once every earlier row of its order is stamped published (= acknowledged
//! by the broker, so stored before it), and a row two relays both publish is
//! one message for the broker (same `Nats-Msg-Id` within the duplicate
//! window). The lock only spares the duplicate work.
//!
//! A step: the oldest unpublished rows (id order), each expanded into its
//! order events (a writer batch's row names the orders it inserted, one
//! message each, read back from `orders`; a cancellation's or refund's row is
//! one event), at most one message per order (a later state of an order
//! waits for the next step), published pipelined, every acknowledgement
//! awaited, then the rows whose every message was acknowledged stamped
//! `published_at`. A failure (NATS down, restarting, no stream) stops the
//! step; the rows not stamped are published again after a backoff (the
//! broker drops what it already has). The purchase path never waits for any
//! of this: it only writes rows.
//!
//! The relay yields to the crowd: while this process answers purchases
//! faster than `SECKILL_OUTBOX_YIELD_RPS`, it publishes nothing, so the
//! CPU its publishing (and the broker's storing) would take goes to the
//! shoppers; it publishes anyway once the oldest owed event is
//! `SECKILL_OUTBOX_MAX_LAG_SECS` old, and catches up when the crowd thins.
//! Order events are notifications for other systems: seconds of delay in a
//! sale's peak cost them nothing, the shoppers' answers are the product.
//! Nothing owed is at risk meanwhile: it is committed in the outbox.
//!
//! Published rows older than `SECKILL_OUTBOX_KEEP_MINUTES` are deleted by
//! the leader in bounded chunks. Every process reports the backlog and the
//! age of the oldest unpublished row in `/metrics`.

pub mod broker;
pub mod reader;

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    sync::Arc,
    time::Duration,
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::OutboxSettings,
    db::{self, outbox::Unpublished, DbError},
    redis::{LeaderLock, Redis, RedisError},
};
use broker::{Broker, BrokerError};

/// Most outbox rows read in one step: a writer batch's row names up to
/// `SECKILL_BATCH_MAX` orders, so a few of them fill a step, and reading
/// many more only to leave them for the next step would cost their arrays.
const ROWS: i64 = 128;
/// A step stops taking rows once they hold this many order events.
const MESSAGES: usize = 2_048;
/// Pause when nothing is owed.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause when another process relays.
const FOLLOWER_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the backlog gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// How often the leader deletes old published rows, and how many per statement.
const CLEANUP_EVERY: Duration = Duration::from_secs(30);
const CLEANUP_CHUNK: i64 = 5_000;
/// Leader lock TTL, renewed every step: above one step (its publishes are
/// bounded by twice [`broker::PUBLISH_TIMEOUT`]), and short, so a relay
/// that was killed is replaced within seconds. A step that outlives it is
/// still safe (see the module docs), only possibly duplicated work.
const LOCK_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Purchase requests this process answered, counted by the purchase path;
/// the relay measures their rate to yield to a crowd.
#[derive(Debug, Default)]
pub struct Crowd {
    answered: AtomicU64,
}

impl Crowd {
    /// One purchase request answered (any outcome).
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The crowd's rate, measured between two looks at least
/// [`CROWD_WINDOW`] apart.
struct CrowdRate {
    last: (u64, tokio::time::Instant),
    per_sec: f64,
}

/// Shortest window the crowd's rate is measured over.
const CROWD_WINDOW: Duration = Duration::from_millis(100);
/// Pause between two looks at the crowd while yielding.
const YIELD_POLL: Duration = Duration::from_millis(100);

impl CrowdRate {
    fn new(crowd: &Crowd) -> Self {
        Self {
            last: (
                crowd.answered.load(Ordering::Relaxed),
                tokio::time::Instant::now(),
            ),
            per_sec: 0.0,
        }
    }

    /// Purchases per second over the last window (the previous figure until
    /// a window has passed).
    fn measure(&mut self, crowd: &Crowd) -> f64 {
        let now = tokio::time::Instant::now();
        let elapsed = now - self.last.1;
        if elapsed >= CROWD_WINDOW {
            let count = crowd.answered.load(Ordering::Relaxed);
            self.per_sec = count.saturating_sub(self.last.0) as f64 / elapsed.as_secs_f64();
            self.last = (count, now);
        }
        self.per_sec
    }
}

/// What the relay owes, as last measured (for the dashboard and `/metrics`).
#[derive(Debug, Default)]
pub struct Backlog {
    rows: AtomicI64,
    oldest_ms: AtomicU64,
}

impl Backlog {
    /// Unpublished rows and the age of the oldest, in seconds.
    pub fn get(&self) -> (i64, f64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.oldest_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }

    fn set(&self, rows: i64, oldest_seconds: f64) {
        self.rows.store(rows, Ordering::Relaxed);
        self.oldest_ms
            .store((oldest_seconds * 1000.0) as u64, Ordering::Relaxed);
        metrics::gauge!("seckill_outbox_backlog").set(rows as f64);
        metrics::gauge!("seckill_outbox_lag_seconds").set(oldest_seconds);
    }
}

/// The relay of one engine process, and what it works with.
pub struct Relay {
    db: PgPool,
    lock: LeaderLock,
    settings: OutboxSettings,
    backlog: Arc<Backlog>,
    crowd: Arc<Crowd>,
}

enum Step {
    Published(usize),
    Idle,
    Follower,
}

impl Relay {
    pub fn new(
        db: PgPool,
        redis: &Redis,
        settings: OutboxSettings,
        backlog: Arc<Backlog>,
        crowd: Arc<Crowd>,
    ) -> Self {
        let lock = LeaderLock::new(redis.clone(), redis.keys().outbox_lock(), LOCK_TTL);
        Self {
            db,
            lock,
            settings,
            backlog,
            crowd,
        }
    }

    /// Whether to hold back this step: the crowd comes faster than the
    /// yield rate and the oldest owed event is younger than the longest lag.
    fn yields(&self, rate: &mut CrowdRate) -> bool {
        let Some(yield_rps) = self.settings.yield_rps else {
            return false;
        };
        let (owed, oldest_secs) = self.backlog.get();
        let yielding = owed > 0
            && rate.measure(&self.crowd) >= yield_rps as f64
            && oldest_secs < self.settings.max_lag.as_secs_f64();
        metrics::gauge!("seckill_outbox_yielding").set(if yielding { 1.0 } else { 0.0 });
        yielding
    }

    /// Measures the backlog every second until `stop`; publishes too when a
    /// NATS URL is configured.
    pub async fn run(self, stop: CancellationToken) {
        let gauges = tokio::spawn(measure_backlog(
            self.db.clone(),
            self.backlog.clone(),
            stop.clone(),
        ));
        if let Some(url) = self.settings.nats_url.clone() {
            self.relay(&url, &stop).await;
        } else {
            tracing::info!("SECKILL_NATS_URL is off: order events stay in the outbox, unpublished");
        }
        let _ = gauges.await;
    }

    async fn relay(&self, url: &str, stop: &CancellationToken) {
        let mut broker = loop {
            match Broker::connect(url, &self.settings.stream, &self.settings.subject_prefix).await {
                Ok(broker) => break broker,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay: bad NATS settings; retrying");
                    if sleep_or_stop(MAX_BACKOFF, stop).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(url, stream = %self.settings.stream, "outbox relay started");
        let mut backoff = Duration::from_millis(100);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut rate = CrowdRate::new(&self.crowd);
        loop {
            if stop.is_cancelled() {
                break;
            }
            if self.yields(&mut rate) {
                if sleep_or_stop(YIELD_POLL, stop).await {
                    break;
                }
                continue;
            }
            let pause = match self.step(&mut broker).await {
                Ok(Step::Published(n)) => {
                    backoff = Duration::from_millis(100);
                    if last_cleanup.elapsed() >= CLEANUP_EVERY {
                        last_cleanup = tokio::time::Instant::now();
                        self.clean_up().await;
                    }
                    if n >= MESSAGES / 4 {
                        Duration::ZERO
                    } else {
                        IDLE_POLL
                    }
                }
                Ok(Step::Idle) => {
                    if last_cleanup.elapsed() >= CLEANUP_EVERY {
                        last_cleanup = tokio::time::Instant::now();
                        self.clean_up().await;
                    }
                    IDLE_POLL
                }
                Ok(Step::Follower) => FOLLOWER_POLL,
                Err(err) => {
                    metrics::counter!("seckill_outbox_publish_errors_total").increment(1);
                    tracing::warn!(error = %err, retry_in = ?backoff, "outbox relay step failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            if !pause.is_zero() && sleep_or_stop(pause, stop).await {
                break;
            }
        }
        let _ = self.lock.release().await;
    }

    async fn step(&self, broker: &mut Broker) -> Result<Step, RelayError> {
        if !self.lock.hold().await? {
            return Ok(Step::Follower);
        }
        let rows = db::outbox::unpublished(&self.db, ROWS).await?;
        if rows.is_empty() {
            return Ok(Step::Idle);
        }
        let (messages, owed) = self.expand(rows).await?;
        let (stored, error) = broker.publish(&first_per_order(messages)).await;
        let published = fully_stored(&owed, &stored);
        db::outbox::mark_published(&self.db, &published).await?;
        metrics::counter!("seckill_outbox_published_total").increment(stored.len() as u64);
        match error {
            Some(err) => Err(err.into()),
            None => Ok(Step::Published(stored.len())),
        }
    }

    /// The messages of `rows` in row order, cut after the row that reaches
    /// [`MESSAGES`], and how many each row owes. A writer batch's row gives
    /// one message per order, its state and payload read from the order row.
    async fn expand(
        &self,
        rows: Vec<db::outbox::UnpublishedRow>,
    ) -> Result<(Vec<Unpublished>, Vec<(i64, usize)>), RelayError> {
        let mut take = 0;
        let mut counted = 0;
        for row in &rows {
            take += 1;
            counted += row.order_nos.as_ref().map_or(1, Vec::len);
            if counted >= MESSAGES {
                break;
            }
        }
        let rows = &rows[..take];
        let in_batches: Vec<Uuid> = rows
            .iter()
            .filter_map(|r| r.order_nos.as_ref())
            .flatten()
            .copied()
            .collect();
        let mut persisted: HashMap<Uuid, db::outbox::PersistedOrder> = if in_batches.is_empty() {
            HashMap::new()
        } else {
            db::outbox::batch_events(&self.db, &in_batches)
                .await?
                .into_iter()
                .map(|o| (o.order_no, o))
                .collect()
        };
        let mut messages = Vec::with_capacity(counted);
        let mut owed = Vec::with_capacity(rows.len());
        for row in rows {
            match (&row.order_nos, row.order_no, &row.payload) {
                (Some(order_nos), _, _) => {
                    let before = messages.len();
                    for order_no in order_nos {
                        // Written in the same transaction as the row: always there.
                        let Some(order) = persisted.remove(order_no) else {
                            tracing::error!(%order_no, row = row.id, "outbox batch names an order that is not in orders");
                            continue;
                        };
                        messages.push(Unpublished {
                            id: row.id,
                            order_no: order.order_no,
                            event_id: order.event_id,
                            kind: order.kind().to_owned(),
                            payload: order.payload(),
                        });
                    }
                    owed.push((row.id, messages.len() - before));
                }
                (None, Some(order_no), Some(payload)) => {
                    messages.push(Unpublished {
                        id: row.id,
                        order_no,
                        event_id: row.event_id,
                        kind: row.kind.clone(),
                        payload: payload.clone(),
                    });
                    owed.push((row.id, 1));
                }
                _ => tracing::error!(row = row.id, "outbox row of neither form"),
            }
        }
        Ok((messages, owed))
    }

    /// Deletes published rows past the retention, a chunk at a time.
    async fn clean_up(&self) {
        let Ok(keep) = chrono::TimeDelta::from_std(self.settings.keep) else {
            return;
        };
        let before = chrono::Utc::now() - keep;
        loop {
            match db::outbox::delete_published(&self.db, before, CLEANUP_CHUNK).await {
                Ok(n) => {
                    metrics::counter!("seckill_outbox_deleted_total").increment(n);
                    if (n as i64) < CLEANUP_CHUNK {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox clean-up failed");
                    return;
                }
            }
        }
    }
}

/// The rows every message of which the broker stored (a row held back in
/// part by [`first_per_order`] is published again, whole, next time).
fn fully_stored(owed: &[(i64, usize)], stored: &[i64]) -> Vec<i64> {
    let mut per_row: HashMap<i64, usize> = HashMap::with_capacity(owed.len());
    for id in stored {
        *per_row.entry(*id).or_default() += 1;
    }
    owed.iter()
        .filter(|(id, n)| per_row.get(id).copied().unwrap_or(0) == *n)
        .map(|(id, _)| *id)
        .collect()
}

/// Keeps the first (oldest) message of each order: a later state of an order
/// is published only after the earlier one was acknowledged and stamped.
fn first_per_order(rows: Vec<Unpublished>) -> Vec<Unpublished> {
    let mut seen = HashSet::with_capacity(rows.len());
    rows.into_iter()
        .filter(|r| seen.insert(r.order_no))
        .collect()
}

async fn measure_backlog(db: PgPool, backlog: Arc<Backlog>, stop: CancellationToken) {
    loop {
        match db::outbox::backlog(&db).await {
            Ok((rows, oldest)) => backlog.set(rows, oldest),
            Err(err) => tracing::debug!(error = %err, "outbox backlog not measured"),
        }
        if sleep_or_stop(GAUGE_EVERY, &stop).await {
            return;
        }
    }
}

/// Sleeps; true when `stop` was cancelled meanwhile.
async fn sleep_or_stop(pause: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn row(id: i64, order_no: Uuid, kind: &str) -> Unpublished {
        Unpublished {
            id,
            order_no,
            event_id: 7,
            kind: kind.into(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn a_later_state_of_an_order_waits_for_the_earlier_one() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let rows = vec![
            row(1, a, "order.confirmed"),
            row(2, b, "order.failed"),
            row(3, a, "order.refunded"),
        ];
        let ids: Vec<i64> = first_per_order(rows).iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn subjects_and_message_ids() {
        let order_no = Uuid::nil();
        let r = row(5, order_no, "order.confirmed");
        assert_eq!(
            broker::subject("seckill.orders", &r),
            "seckill.orders.7.confirmed"
        );
        assert_eq!(
            broker::message_id(&r),
            "00000000-0000-0000-0000-000000000000:order.confirmed"
        );
    }
}
