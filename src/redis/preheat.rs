//! `preheat.lua`: load a sale into Redis (a rebuild is [`super::rebuild`]).

use fred::types::Value;

use super::{keys::Bucket, Redis, RedisError};

/// Sale parameters as loaded into an event's meta hash.
#[derive(Clone, Copy, Debug)]
pub struct SaleParams {
    pub price: i64,
    pub per_user_limit: i32,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub stock_total: i64,
    /// Paused by an operator: purchase.lua refuses every attempt.
    pub paused: bool,
}

impl Redis {
    /// Loads an event that Redis does not hold yet; false when it already did.
    pub async fn preheat(
        &self,
        bucket: impl Into<Bucket>,
        sale: SaleParams,
    ) -> Result<bool, RedisError> {
        let bucket: Bucket = bucket.into();
        let loaded = self
            .run_for_int(
                &self.scripts.preheat,
                self.keys.event(bucket).all(),
                sale_args(sale),
            )
            .await?;
        self.add_live_event(bucket.event_id).await?;
        Ok(loaded == 1)
    }
}

/// The sale parameters as the scripts take them.
pub(super) fn sale_args(sale: SaleParams) -> Vec<Value> {
    vec![
        Value::from(sale.price),
        Value::from(sale.per_user_limit as i64),
        Value::from(sale.starts_ms),
        Value::from(sale.ends_ms),
        Value::from(sale.stock_total),
        Value::from(if sale.paused { "1" } else { "0" }),
    ]
}
