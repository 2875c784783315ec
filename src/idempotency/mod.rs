//! `Idempotency-Key` for purchases: the same user, key and request get the
//! same answer and one side effect, whatever happens to Redis.
//!
//! Two records per key:
//!
//! - Redis (`idempotency.lua`) holds every key's state: claimed and in flight
//!   with the order_no the attempt uses, `retry` after an attempt that ended
//!   without an answer, or `done` with the answer to replay. Claims are one
//!   atomic script, so two requests can never both take a key, and a claim
//!   re-sent by the Redis client finds its own record as its own.
//! - Postgres (`idempotency_keys`) holds, for each key whose purchase was
//!   accepted, the order_no it produced; it is written before the 202 leaves.
//!   A claim that finds no Redis record (a new key, or one Redis lost) asks
//!   Postgres before it buys: a key that bought resumes its recorded order_no.
//!
//! Postgres is asked through [`DurableKeys`], which puts the lookups and
//! records of concurrent requests into shared statements (a group commit).
//!
//! Resuming is always safe because `purchase.lua` is idempotent per order_no:
//! an order_no Redis already accepted answers "already accepted" and takes
//! nothing. Refusals are kept in Redis only: after a Redis loss a refused key
//! is judged again, which can still buy at most once.

mod durable;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use durable::{DurableKeys, KeyToRecord};

use crate::{
    db::DbError,
    redis::{KeyClaim, KeyState, Redis, RedisError},
};

/// Keys are 1..=255 printable ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// How long after its event ends a key is honoured. The reconciler keeps an
/// ended event's Redis state exactly as long (see `reconciler`).
pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A claimed attempt older than this is presumed dead and may be resumed.
/// Longer than any request can live (see `http::REQUEST_TIMEOUT`).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// A response kept for replays: the status and the JSON body as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// What to do with this request.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new attempt: buy with this order_no.
    New(Uuid),
    /// An earlier attempt with this order_no may have bought (it ended
    /// without an answer, or Redis lost its record): buy with it again.
    Resume(Uuid),
    Replay(StoredResponse),
    InProgress,
    /// Same key, different request.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// Another attempt recorded an order under this key first (only across
    /// a Redis loss); the caller undoes its own.
    #[error("key taken by order {0}")]
    Taken(Uuid),
}

/// One shopper's key for one request.
pub struct IdempotencyStore<'a> {
    redis: &'a Redis,
    durable: &'a DurableKeys,
    user_id: i64,
    key: &'a str,
    fingerprint: String,
    event_id: i64,
    expires_at: DateTime<Utc>,
}

impl<'a> IdempotencyStore<'a> {
    /// `expires_at`: the event's end plus the retention.
    pub fn new(
        redis: &'a Redis,
        durable: &'a DurableKeys,
        user_id: i64,
        key: &'a str,
        event_id: i64,
        quantity: i32,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self {
            redis,
            durable,
            user_id,
            key,
            fingerprint: format!("{event_id}:{quantity}"),
            event_id,
            expires_at,
        }
    }

    fn ttl_ms(&self) -> i64 {
        (self.expires_at - Utc::now())
            .num_milliseconds()
            .max(60_000)
    }

    pub async fn claim(&self) -> Result<Claim, StoreError> {
        let claim = self
            .redis
            .claim_key(
                self.user_id,
                self.key,
                &self.fingerprint,
                Uuid::now_v7(),
                self.ttl_ms(),
                STALE_AFTER.as_millis() as i64,
            )
            .await?;
        Ok(match claim {
            KeyClaim::New(order_no) => self.recover(order_no).await?,
            KeyClaim::Resume(order_no) => Claim::Resume(order_no),
            KeyClaim::Done { status, body } => Claim::Replay(StoredResponse { status, body }),
            KeyClaim::InProgress => Claim::InProgress,
            KeyClaim::Mismatch => Claim::Mismatch,
        })
    }

    /// Redis had no record for the key: a new key, or one Redis lost. Every
    /// key that bought is in Postgres; such a key resumes its order.
    async fn recover(&self, candidate: Uuid) -> Result<Claim, StoreError> {
        let durable = match self.durable.find(self.user_id, self.key).await {
            Ok(durable) => durable,
            Err(err) => {
                let _ = self.abandon(candidate).await;
                return Err(err.into());
            }
        };
        Ok(match durable {
            None => Claim::New(candidate),
            Some(found) if found.fingerprint != self.fingerprint => {
                self.put(&found.fingerprint, found.order_no, KeyState::Retry)
                    .await?;
                Claim::Mismatch
            }
            Some(found) => {
                self.put(&self.fingerprint, found.order_no, KeyState::InFlight)
                    .await?;
                Claim::Resume(found.order_no)
            }
        })
    }

    /// Whether this key's purchase was accepted (Postgres holds it).
    pub async fn was_accepted(&self, order_no: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .durable
            .find(self.user_id, self.key)
            .await?
            .is_some_and(|found| found.order_no == order_no))
    }

    /// The purchase was accepted: make the key durable before anyone is told.
    pub async fn record_accepted(&self, order_no: Uuid) -> Result<(), StoreError> {
        let recorded = self
            .durable
            .record(KeyToRecord {
                user_id: self.user_id,
                key: self.key.to_owned(),
                fingerprint: self.fingerprint.clone(),
                order_no,
                event_id: self.event_id,
                expires_at: self.expires_at,
            })
            .await?;
        if recorded.order_no != order_no {
            return Err(StoreError::Taken(recorded.order_no));
        }
        Ok(())
    }

    /// Keeps the answer for replays (refusals: Redis only).
    pub async fn complete(
        &self,
        order_no: Uuid,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        self.put(
            &self.fingerprint,
            order_no,
            KeyState::Done {
                status: response.status,
                body: &response.body,
            },
        )
        .await
    }

    /// The attempt ended without an answer; the next retry resumes it.
    pub async fn abandon(&self, order_no: Uuid) -> Result<(), StoreError> {
        self.put(&self.fingerprint, order_no, KeyState::Retry).await
    }

    async fn put(
        &self,
        fingerprint: &str,
        order_no: Uuid,
        state: KeyState<'_>,
    ) -> Result<(), StoreError> {
        Ok(self
            .redis
            .put_key(
                self.user_id,
                self.key,
                fingerprint,
                order_no,
                self.ttl_ms(),
                state,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn key_rules() {
        assert!(valid_key(b"abc-123 ~"));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; 256]));
        assert!(valid_key(&[b'a'; 255]));
        assert!(!valid_key("clé".as_bytes()));
        assert!(!valid_key(b"tab\there"));
    }
}
