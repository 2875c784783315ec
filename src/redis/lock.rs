//! A leader lock in Redis: a key holding a random token, taken with
//! `SET NX PX`, renewed by `renew.lua` and released by `unlock.lua` only
//! while the token is still ours (compare, then write, in one step).

use std::time::Duration;

use fred::prelude::*;
use uuid::Uuid;

use super::{Redis, RedisError};

/// One process's hold on a named lock.
pub struct LeaderLock {
    redis: Redis,
    key: String,
    token: String,
    ttl: Duration,
}

impl LeaderLock {
    /// The lock named by `key` (see [`super::Keys`]), held for `ttl` at a time.
    pub fn new(redis: Redis, key: String, ttl: Duration) -> Self {
        Self {
            redis,
            key,
            token: Uuid::new_v4().to_string(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lock or extends our hold on it; false when another process has it.
    pub async fn hold(&self) -> Result<bool, RedisError> {
        let ttl_ms = self.ttl.as_millis() as i64;
        let renewed = self
            .redis
            .run_for_int(
                &self.redis.scripts.renew,
                vec![self.key.clone()],
                vec![self.token.as_str().into(), ttl_ms.into()],
            )
            .await?;
        if renewed == 1 {
            return Ok(true);
        }
        let set: Option<String> = self
            .redis
            .client()
            .set(
                &self.key,
                self.token.as_str(),
                Some(Expiration::PX(ttl_ms)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.is_some())
    }

    /// Lets go, only if the lock is still ours.
    pub async fn release(&self) -> Result<bool, RedisError> {
        let released = self
            .redis
            .run_for_int(
                &self.redis.scripts.unlock,
                vec![self.key.clone()],
                vec![self.token.as_str().into()],
            )
            .await?;
        Ok(released == 1)
    }
}
