//! `preheat.lua`: load a sale into Redis, or rebuild it from Postgres truth.

use fred::types::Value;
use uuid::Uuid;

use super::{settle::FAILED_KEPT_PER_SHOPPER, Redis, RedisError};

/// Sale parameters as loaded into an event's meta hash.
#[derive(Clone, Copy, Debug)]
pub struct SaleParams {
    pub price: i64,
    pub per_user_limit: i32,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub stock_total: i64,
}

/// An order as Postgres knows it, for a rebuild.
#[derive(Clone, Copy, Debug)]
pub struct PersistedOrder {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i32,
    pub failed: bool,
}

impl Redis {
    /// Loads an event that Redis does not hold yet; false when it already did.
    pub async fn preheat(&self, event_id: i64, sale: SaleParams) -> Result<bool, RedisError> {
        let loaded = self
            .run_for_int(
                &self.scripts.preheat,
                self.keys.event(event_id).all(),
                sale_args("init", sale),
            )
            .await?;
        self.add_live_event(event_id).await?;
        Ok(loaded == 1)
    }

    /// Replaces an event's Redis state by Postgres truth (`orders`, oldest
    /// first) plus the pending intents Redis still holds. Returns
    /// (stock_left, intents kept).
    pub async fn rebuild(
        &self,
        event_id: i64,
        sale: SaleParams,
        orders: &[PersistedOrder],
    ) -> Result<(i64, i64), RedisError> {
        let mut args = sale_args("rebuild", sale);
        args.reserve(orders.len() * 4);
        for order in orders {
            args.push(Value::from(order.order_no.to_string()));
            args.push(Value::from(order.user_id));
            args.push(Value::from(order.quantity as i64));
            args.push(Value::from(if order.failed { "1" } else { "0" }));
        }
        let reply = self
            .run(&self.scripts.preheat, self.keys.event(event_id).all(), args)
            .await?;
        self.add_live_event(event_id).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 => {
                if let (Some(left), Some(kept)) = (items[0].as_i64(), items[1].as_i64()) {
                    return Ok((left, kept));
                }
            }
            _ => {}
        }
        Err(RedisError::Protocol(format!(
            "preheat.lua rebuild returned {reply:?}"
        )))
    }
}

fn sale_args(mode: &str, sale: SaleParams) -> Vec<Value> {
    vec![
        Value::from(mode),
        Value::from(sale.price),
        Value::from(sale.per_user_limit as i64),
        Value::from(sale.starts_ms),
        Value::from(sale.ends_ms),
        Value::from(sale.stock_total),
        Value::from(FAILED_KEPT_PER_SHOPPER as i64),
    ]
}
