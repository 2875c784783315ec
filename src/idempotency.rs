//! `Idempotency-Key` for purchases: the same user, key and request get the
//! same response and one side effect.
//!
//! A record per (user, key) lives in Redis: claimed with `SET NX` before the
//! purchase (holding the order_no the attempt will use), completed with the
//! response after it. Because `purchase.lua` is idempotent per order_no, an
//! attempt that died half-way (process crash, Redis timeout) is resumed with
//! the recorded order_no and can never buy twice.

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::redis::{Redis, RedisError};

/// Keys are 1..=255 printable ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// A claimed attempt older than this is presumed dead and may be resumed.
const STALE_AFTER_MS: i64 = 15_000;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// What the request asked for: event and body.
    fingerprint: String,
    order_no: Uuid,
    state: State,
    started_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<StoredResponse>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum State {
    InFlight,
    /// The attempt failed without an answer (Redis error): resume it.
    Retry,
    Done,
}

/// A response kept for replays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// What to do with this request.
#[derive(Debug)]
pub enum Claim {
    /// Go ahead with this order_no (new, or resuming an attempt that died).
    Proceed(Uuid),
    Replay(StoredResponse),
    InProgress,
    /// Same key, different request.
    Mismatch,
}

pub struct IdempotencyStore<'a> {
    redis: &'a Redis,
    key: String,
    fingerprint: String,
    ttl_ms: i64,
}

impl<'a> IdempotencyStore<'a> {
    /// `ttl_ms`: until the event ends plus 24 h.
    pub fn new(
        redis: &'a Redis,
        user_id: i64,
        key: &str,
        fingerprint: String,
        ttl_ms: i64,
    ) -> Self {
        Self {
            key: redis.keys().idempotency(user_id, key),
            redis,
            fingerprint,
            ttl_ms: ttl_ms.max(60_000),
        }
    }

    pub async fn claim(&self) -> Result<Claim, RedisError> {
        let now = chrono::Utc::now().timestamp_millis();
        let fresh = Record {
            fingerprint: self.fingerprint.clone(),
            order_no: Uuid::now_v7(),
            state: State::InFlight,
            started_ms: now,
            response: None,
        };
        let set: Option<String> = self
            .redis
            .client()
            .set(
                &self.key,
                encode(&fresh),
                Some(Expiration::PX(self.ttl_ms)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if set.is_some() {
            return Ok(Claim::Proceed(fresh.order_no));
        }
        let raw: Option<String> = self.redis.client().get(&self.key).await?;
        let Some(existing) = raw
            .as_deref()
            .and_then(|r| serde_json::from_str::<Record>(r).ok())
        else {
            // Expired between SET and GET, or unreadable: claim it anew.
            self.put(&fresh).await?;
            return Ok(Claim::Proceed(fresh.order_no));
        };
        if existing.fingerprint != self.fingerprint {
            return Ok(Claim::Mismatch);
        }
        match existing.state {
            State::Done => Ok(existing.response.map_or(Claim::InProgress, Claim::Replay)),
            State::InFlight if now - existing.started_ms < STALE_AFTER_MS => Ok(Claim::InProgress),
            State::InFlight | State::Retry => {
                let resumed = Record {
                    started_ms: now,
                    state: State::InFlight,
                    ..existing
                };
                self.put(&resumed).await?;
                Ok(Claim::Proceed(resumed.order_no))
            }
        }
    }

    /// Stores the answer for replays.
    pub async fn complete(
        &self,
        order_no: Uuid,
        response: StoredResponse,
    ) -> Result<(), RedisError> {
        self.store(order_no, State::Done, Some(response)).await
    }

    /// The attempt ended without an answer; the next retry resumes it.
    pub async fn abandon(&self, order_no: Uuid) -> Result<(), RedisError> {
        self.store(order_no, State::Retry, None).await
    }

    async fn store(
        &self,
        order_no: Uuid,
        state: State,
        response: Option<StoredResponse>,
    ) -> Result<(), RedisError> {
        let record = Record {
            fingerprint: self.fingerprint.clone(),
            order_no,
            state,
            started_ms: chrono::Utc::now().timestamp_millis(),
            response,
        };
        self.put(&record).await
    }

    /// Overwrites the record, keeping the retention.
    async fn put(&self, record: &Record) -> Result<(), RedisError> {
        let _: () = self
            .redis
            .client()
            .set(
                &self.key,
                encode(record),
                Some(Expiration::PX(self.ttl_ms)),
                None,
                false,
            )
            .await?;
        Ok(())
    }
}

fn encode(record: &Record) -> String {
    serde_json::to_string(record).expect("record serializes")
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
