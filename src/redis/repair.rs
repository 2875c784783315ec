//! Corrections of an event's drifted state: `repair.lua` writes only if the
//! state is still exactly as observed; `cap.lua` lowers the stock to an upper
//! bound of the truth.

use fred::types::Value;

use super::{keys::Bucket, Redis, RedisError};

impl Redis {
    /// Runs `repair.lua` on some buyers: (user, units observed, units
    /// corrected). True when every one still held what was observed and got
    /// corrected (the `held` counter follows); false when any moved.
    pub async fn repair_buyers(
        &self,
        bucket: impl Into<Bucket>,
        buyers: &[(i64, i64, i64)],
    ) -> Result<bool, RedisError> {
        let bucket: Bucket = bucket.into();
        let parts = Self::in_parts(buyers, |part| self.repair(bucket, None, None, part)).await?;
        Ok(parts.into_iter().all(|repaired| repaired))
    }

    /// Runs `repair.lua` on the stock and the `held` counter: set to
    /// `corrected` and `held` only if the stock is still `observed` and the
    /// ledger's `pending` counter still `observed_pending` (a purchase,
    /// release or ack in between moves one of them).
    pub async fn repair_stock(
        &self,
        bucket: impl Into<Bucket>,
        observed: Option<i64>,
        observed_pending: i64,
        corrected: i64,
        held: i64,
    ) -> Result<bool, RedisError> {
        let bucket: Bucket = bucket.into();
        self.repair(
            bucket,
            Some((observed.unwrap_or(-1), corrected)),
            Some((observed_pending, held)),
            &[],
        )
        .await
    }

    async fn repair(
        &self,
        bucket: impl Into<Bucket>,
        stock: Option<(i64, i64)>,
        counters: Option<(i64, i64)>,
        buyers: &[(i64, i64, i64)],
    ) -> Result<bool, RedisError> {
        let bucket: Bucket = bucket.into();
        let k = self.keys.event(bucket);
        let (observed, corrected) = match stock {
            Some((observed, corrected)) => (Value::from(observed), Value::from(corrected)),
            None => (Value::from("-"), Value::from("-")),
        };
        let (pending, held) = match counters {
            Some((pending, held)) => (Value::from(pending), Value::from(held)),
            None => (Value::from("-"), Value::from("-")),
        };
        let mut args = vec![observed, corrected, pending, held];
        for (user, before, after) in buyers {
            args.extend([
                Value::from(*user),
                Value::from(*before),
                Value::from(*after),
            ]);
        }
        let repaired = self
            .run_for_int(&self.scripts.repair, vec![k.meta, k.stock, k.bought], args)
            .await?;
        Ok(repaired == 1)
    }

    /// Runs `cap.lua`: the event's stock lowered to at most `unsold`; returns
    /// the stock after (-1 when the event is not loaded).
    pub async fn cap_stock(
        &self,
        bucket: impl Into<Bucket>,
        unsold: i64,
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        self.run_for_int(
            &self.scripts.cap,
            vec![self.keys.event(bucket).stock],
            vec![Value::from(unsold.max(0))],
        )
        .await
    }
}
