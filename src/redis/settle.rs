//! Settling persisted orders in Redis: confirmed ones are acked by
//! `ack.lua` (they leave the ledger), failed ones go through `release.lua`,
//! which restocks their units or, for units that never existed, discards them.

use fred::types::Value;
use uuid::Uuid;

use super::{keys::Bucket, Redis, RedisError};

/// Failed order_nos a shopper's list keeps per event (the newest): a
/// shopper who cannot pay cannot grow Redis, or the scripts' work, without
/// bound. `release.lua` prunes to it, and a rebuild (`preheat.lua`) loads no
/// more than it.
pub const FAILED_KEPT_PER_SHOPPER: usize = 8;

impl Redis {
    /// Runs `ack.lua`: persisted intents leave the ledger; returns how many
    /// were still there.
    pub async fn ack(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        if order_nos.is_empty() {
            return Ok(0);
        }
        let parts = Self::in_parts(order_nos, |part| {
            let k = self.keys.event(bucket);
            self.run_for_int(
                &self.scripts.ack,
                vec![k.meta, k.ledger],
                part.iter().map(|o| Value::from(o.to_string())).collect(),
            )
        })
        .await?;
        Ok(parts.into_iter().sum())
    }

    /// `release.lua` restock: the units of failed orders back on sale, once;
    /// returns the units returned.
    pub async fn release(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        self.release_with(bucket, order_nos, "restock").await
    }

    /// `release.lua` discard: failed orders whose units never existed leave
    /// the ledger without going back on sale.
    pub async fn discard(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        self.release_with(bucket, order_nos, "discard").await
    }

    async fn release_with(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
        mode: &str,
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        if order_nos.is_empty() {
            return Ok(0);
        }
        let parts = Self::in_parts(order_nos, |part| {
            let mut args = Vec::with_capacity(part.len() + 2);
            args.push(Value::from(FAILED_KEPT_PER_SHOPPER as i64));
            args.push(Value::from(mode));
            args.extend(part.iter().map(|o| Value::from(o.to_string())));
            self.run_for_int(&self.scripts.release, self.keys.event(bucket).all(), args)
        })
        .await?;
        Ok(parts.into_iter().sum())
    }
}
