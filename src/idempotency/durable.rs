//! The Postgres half of the key records, in shared statements: the lookups
//! of concurrent requests go out as one query, their records as one
//! INSERT, so one commit (one WAL flush) covers every key that arrived while
//! the previous one ran — a group commit. Under load a keyed purchase costs
//! a share of a statement, not a transaction of its own; alone, it costs
//! what it did (no waiting to fill a batch).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::db::{
    self,
    idempotency::{Accepted, KeyId, KeyRecord},
    DbError,
};

/// Most keys in one statement.
const MOST_PER_STATEMENT: usize = 256;
/// Statements of each kind in flight at once.
const WORKERS: usize = 2;
/// Requests waiting for a statement, at most (then callers wait to queue).
const QUEUE: usize = 8_192;

/// A key whose purchase was accepted, to make durable.
#[derive(Clone, Debug)]
pub struct KeyToRecord {
    pub user_id: i64,
    pub key: String,
    pub fingerprint: String,
    pub order_no: Uuid,
    pub event_id: i64,
    pub expires_at: DateTime<Utc>,
}

impl KeyToRecord {
    fn id(&self) -> KeyId {
        (self.user_id, self.key.clone())
    }

    fn as_accepted(&self) -> Accepted<'_> {
        Accepted {
            user_id: self.user_id,
            key: &self.key,
            fingerprint: &self.fingerprint,
            order_no: self.order_no,
            event_id: self.event_id,
            expires_at: self.expires_at,
        }
    }
}

struct Job<Q, A> {
    query: Q,
    reply: oneshot::Sender<Result<A, DbError>>,
}

type FindJob = Job<KeyId, Option<KeyRecord>>;
type RecordJob = Job<KeyToRecord, KeyRecord>;

/// Handle on the statement workers; cheap to clone. The workers stop when
/// the last handle is dropped.
#[derive(Clone)]
pub struct DurableKeys {
    finds: async_channel::Sender<FindJob>,
    records: async_channel::Sender<RecordJob>,
}

impl DurableKeys {
    pub fn spawn(db: PgPool) -> Self {
        let (finds, find_queue) = async_channel::bounded(QUEUE);
        let (records, record_queue) = async_channel::bounded(QUEUE);
        for _ in 0..WORKERS {
            tokio::spawn(run_finds(db.clone(), find_queue.clone()));
            tokio::spawn(run_records(db.clone(), record_queue.clone()));
        }
        Self { finds, records }
    }

    /// The key's live record, if it bought something.
    pub async fn find(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, DbError> {
        ask(&self.finds, (user_id, key.to_owned())).await
    }

    /// Records an accepted key, committed when this returns; the record the
    /// key holds afterwards, another order's only when a concurrent attempt
    /// got there first (possible only across a Redis loss).
    pub async fn record(&self, accepted: KeyToRecord) -> Result<KeyRecord, DbError> {
        ask(&self.records, accepted).await
    }
}

async fn ask<Q, A>(queue: &async_channel::Sender<Job<Q, A>>, query: Q) -> Result<A, DbError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(Job { query, reply })
        .await
        .map_err(|_| DbError::Batch("the key statement workers stopped".into()))?;
    answer
        .await
        .map_err(|_| DbError::Batch("a key statement worker stopped mid-statement".into()))?
}

/// The first waiting job and whatever else is waiting, up to the bound.
async fn next_batch<Q, A>(queue: &async_channel::Receiver<Job<Q, A>>) -> Option<Vec<Job<Q, A>>> {
    let first = queue.recv().await.ok()?;
    let mut batch = vec![first];
    while batch.len() < MOST_PER_STATEMENT {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn fail_all<Q, A>(batch: Vec<Job<Q, A>>, err: &DbError) {
    let message = err.to_string();
    for job in batch {
        let _ = job.reply.send(Err(DbError::Batch(message.clone())));
    }
}

async fn run_finds(db: PgPool, queue: async_channel::Receiver<FindJob>) {
    while let Some(batch) = next_batch(&queue).await {
        let keys: Vec<KeyId> = batch.iter().map(|j| j.query.clone()).collect();
        match db::idempotency::find_many(&db, &keys).await {
            Ok(found) => {
                let found: HashMap<KeyId, KeyRecord> = found.into_iter().collect();
                for job in batch {
                    let _ = job.reply.send(Ok(found.get(&job.query).cloned()));
                }
            }
            Err(err) => fail_all(batch, &err),
        }
    }
}

async fn run_records(db: PgPool, queue: async_channel::Receiver<RecordJob>) {
    while let Some(batch) = next_batch(&queue).await {
        match record_batch(&db, &batch).await {
            Ok(held) => {
                for job in batch {
                    let answer = held.get(&job.query.id()).cloned().ok_or_else(|| {
                        DbError::Batch(format!(
                            "idempotency key of order {} neither recorded nor found",
                            job.query.order_no
                        ))
                    });
                    let _ = job.reply.send(answer);
                }
            }
            Err(err) => fail_all(batch, &err),
        }
    }
}

/// What every key of the batch holds once its statement committed. A key
/// repeated within the batch goes into the INSERT once (Postgres cannot
/// write one row twice in a statement); it and every key that held a live
/// record already are read back afterwards.
async fn record_batch(
    db: &PgPool,
    batch: &[RecordJob],
) -> Result<HashMap<KeyId, KeyRecord>, DbError> {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let firsts: Vec<Accepted<'_>> = batch
        .iter()
        .filter(|j| seen.insert(j.query.id()))
        .map(|j| j.query.as_accepted())
        .collect();
    let mut held: HashMap<KeyId, KeyRecord> = db::idempotency::record_many(db, &firsts)
        .await?
        .into_iter()
        .collect();
    let unwritten: Vec<KeyId> = seen.into_iter().filter(|k| !held.contains_key(k)).collect();
    if !unwritten.is_empty() {
        held.extend(db::idempotency::find_many(db, &unwritten).await?);
    }
    Ok(held)
}
