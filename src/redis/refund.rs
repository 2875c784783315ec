//! `refund.lua`: the units of refunded orders back to the sale, exactly once
//! each (the `returned` set records them in the same atomic step).

use fred::types::Value;
use uuid::Uuid;

use super::{keys::Bucket, settle::FAILED_KEPT_PER_SHOPPER, Redis, RedisError};

/// An order Postgres has refunded, whose units are to come back.
#[derive(Clone, Copy, Debug)]
pub struct RefundedOrder {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i32,
}

/// What `refund.lua` did with one refunded order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockReturn {
    /// The event is not loaded: closed out, lost or being rebuilt (a rebuild
    /// counts every refund Postgres has as returned). Nothing to return.
    NotLoaded,
    /// Its units went back now.
    Returned,
    /// They had gone back before (a replay).
    AlreadyReturned,
    /// Its intent is still pending in the ledger: retry once acked.
    StillPending,
}

impl StockReturn {
    /// Nothing is left to do for this refund in Redis.
    pub fn is_done(self) -> bool {
        !matches!(self, Self::StillPending)
    }

    fn decode(code: Option<i64>) -> Option<Self> {
        Some(match code? {
            0 => Self::NotLoaded,
            1 => Self::Returned,
            2 => Self::AlreadyReturned,
            3 => Self::StillPending,
            _ => return None,
        })
    }
}

impl Redis {
    /// Runs `refund.lua` for refunded orders of one event, in parts of at
    /// most [`super::MOST_PER_CALL`]; one answer per order, in order.
    pub async fn return_refunded(
        &self,
        bucket: impl Into<Bucket>,
        orders: &[RefundedOrder],
    ) -> Result<Vec<StockReturn>, RedisError> {
        let bucket: Bucket = bucket.into();
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let parts = Self::in_parts(orders, |part| async move {
            let mut args = Vec::with_capacity(1 + part.len() * 3);
            args.push(Value::from(FAILED_KEPT_PER_SHOPPER as i64));
            for order in part {
                args.extend([
                    Value::from(order.order_no.to_string()),
                    Value::from(order.user_id),
                    Value::from(order.quantity as i64),
                ]);
            }
            let keys = self.keys.event(bucket).with_returned();
            let reply = self.run(&self.scripts.refund, keys, args).await?;
            let codes = match &reply {
                Value::Array(items) if items.len() == part.len() => items
                    .iter()
                    .map(|v| StockReturn::decode(v.as_i64()))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            codes.ok_or_else(|| RedisError::Protocol(format!("refund.lua returned {reply:?}")))
        })
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }
}
