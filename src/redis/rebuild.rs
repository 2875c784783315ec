//! `rebuild.lua`: an event's Redis state rebuilt from Postgres truth plus the
//! intents its ledger still holds, in bounded steps (see the script's
//! header). The caller holds the event row `FOR UPDATE` throughout
//! ([`crate::loading::rebuild`] drives the steps from Postgres pages);
//! [`Redis::rebuild`] runs them all from an in-memory list, for small events.

use std::collections::{BTreeMap, HashSet};

use fred::types::Value;
use uuid::Uuid;

use super::{
    keys::Bucket, preheat::sale_args, settle::FAILED_KEPT_PER_SHOPPER, Redis, RedisError,
    SaleParams, MOST_PER_CALL,
};

/// An order as Postgres knows it, for a rebuild.
#[derive(Clone, Copy, Debug)]
pub struct PersistedOrder {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i32,
    pub failed: bool,
}

/// One shopper as a rebuild loads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuiltBuyer {
    pub user_id: i64,
    /// Their order list: oldest first, failed ones marked `!`, no more
    /// failed ones than [`FAILED_KEPT_PER_SHOPPER`] (the newest).
    pub orders: String,
    /// Units of their non-failed orders.
    pub held: i64,
}

impl RebuiltBuyer {
    /// Shoppers from their orders (each shopper's oldest first).
    pub fn from_orders(orders: &[PersistedOrder]) -> Vec<Self> {
        let mut by_user: BTreeMap<i64, Vec<&PersistedOrder>> = BTreeMap::new();
        for order in orders {
            by_user.entry(order.user_id).or_default().push(order);
        }
        by_user
            .into_iter()
            .map(|(user_id, orders)| {
                let failed = orders.iter().filter(|o| o.failed).count();
                let mut skip = failed.saturating_sub(FAILED_KEPT_PER_SHOPPER);
                let mut list = Vec::with_capacity(orders.len());
                let mut held = 0;
                for order in orders {
                    if order.failed {
                        if skip > 0 {
                            skip -= 1;
                            continue;
                        }
                        list.push(format!("{}!", order.order_no));
                    } else {
                        held += order.quantity as i64;
                        list.push(order.order_no.to_string());
                    }
                }
                Self {
                    user_id,
                    orders: list.join(","),
                    held,
                }
            })
            .collect()
    }
}

impl Redis {
    async fn rebuild_step(
        &self,
        bucket: impl Into<Bucket>,
        args: Vec<Value>,
    ) -> Result<Value, RedisError> {
        let bucket: Bucket = bucket.into();
        let keys = self.keys.event(bucket).with_returned();
        self.run(&self.scripts.rebuild, keys, args).await
    }

    /// Step 1: the event is unloaded and its buyers forgotten (the ledger stays).
    pub async fn rebuild_begin(&self, bucket: impl Into<Bucket>) -> Result<(), RedisError> {
        let bucket: Bucket = bucket.into();
        self.rebuild_step(bucket, vec![Value::from("begin")])
            .await?;
        Ok(())
    }

    /// Step 2, a batch at a time: shoppers as Postgres knows them.
    pub async fn rebuild_buyers(
        &self,
        bucket: impl Into<Bucket>,
        buyers: &[RebuiltBuyer],
    ) -> Result<(), RedisError> {
        let bucket: Bucket = bucket.into();
        for chunk in buyers.chunks(MOST_PER_CALL) {
            let mut args = Vec::with_capacity(1 + chunk.len() * 3);
            args.push(Value::from("buyers"));
            for b in chunk {
                args.extend([
                    Value::from(b.user_id),
                    Value::from(b.orders.as_str()),
                    Value::from(b.held),
                ]);
            }
            self.rebuild_step(bucket, args).await?;
        }
        Ok(())
    }

    /// Step 2b, a batch at a time: refunded orders, whose units the rebuilt
    /// sale counts as back in stock, join the `returned` set (so refund.lua
    /// will not return them a second time).
    pub async fn rebuild_returned(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<(), RedisError> {
        let bucket: Bucket = bucket.into();
        for chunk in order_nos.chunks(MOST_PER_CALL) {
            let mut args = Vec::with_capacity(1 + chunk.len());
            args.push(Value::from("returned"));
            args.extend(chunk.iter().map(|o| Value::from(o.to_string())));
            self.rebuild_step(bucket, args).await?;
        }
        Ok(())
    }

    /// Step 3, a ledger page at a time: settled intents leave, the others
    /// are counted for their buyers. Returns (intents kept, units kept).
    pub async fn rebuild_ledger(
        &self,
        bucket: impl Into<Bucket>,
        page: &[(Uuid, bool)],
    ) -> Result<(i64, i64), RedisError> {
        let bucket: Bucket = bucket.into();
        let mut args = Vec::with_capacity(1 + page.len() * 2);
        args.push(Value::from("ledger"));
        for (order_no, persisted) in page {
            args.push(Value::from(order_no.to_string()));
            args.push(Value::from(if *persisted { "1" } else { "0" }));
        }
        let reply = self.rebuild_step(bucket, args).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 => {
                if let (Some(kept), Some(units)) = (items[0].as_i64(), items[1].as_i64()) {
                    return Ok((kept, units));
                }
            }
            _ => {}
        }
        Err(RedisError::Protocol(format!(
            "rebuild.lua ledger returned {reply:?}"
        )))
    }

    /// Step 4: the sale is loaded again. `settled`: units of Postgres's
    /// non-failed orders. Returns the stock left.
    pub async fn rebuild_finish(
        &self,
        bucket: impl Into<Bucket>,
        sale: SaleParams,
        settled: i64,
        pending_units: i64,
    ) -> Result<i64, RedisError> {
        let bucket: Bucket = bucket.into();
        let mut args = vec![Value::from("finish")];
        args.extend(sale_args(sale));
        args.extend([Value::from(settled), Value::from(pending_units)]);
        let left = self.rebuild_step(bucket, args).await?;
        self.add_live_event(bucket.event_id).await?;
        left.as_i64()
            .ok_or_else(|| RedisError::Protocol(format!("rebuild.lua finish returned {left:?}")))
    }

    /// All the steps from an in-memory list of the event's orders (oldest
    /// first): (stock_left, intents kept).
    pub async fn rebuild(
        &self,
        bucket: impl Into<Bucket>,
        sale: SaleParams,
        orders: &[PersistedOrder],
    ) -> Result<(i64, i64), RedisError> {
        let bucket: Bucket = bucket.into();
        self.rebuild_begin(bucket).await?;
        let buyers = RebuiltBuyer::from_orders(orders);
        self.rebuild_buyers(bucket, &buyers).await?;
        let persisted: HashSet<Uuid> = orders.iter().map(|o| o.order_no).collect();
        let (kept, units) = self
            .rebuild_whole_ledger(bucket, |page| {
                let flags = page.iter().map(|o| (*o, persisted.contains(o))).collect();
                async move { Ok::<_, RedisError>(flags) }
            })
            .await?;
        let settled: i64 = buyers.iter().map(|b| b.held).sum();
        let left = self.rebuild_finish(bucket, sale, settled, units).await?;
        Ok((left, kept))
    }

    /// Step 3 over the whole ledger, page by page; `persisted` says which
    /// order_nos of a page Postgres has.
    pub async fn rebuild_whole_ledger<F, Fut, E>(
        &self,
        bucket: impl Into<Bucket>,
        persisted: F,
    ) -> Result<(i64, i64), E>
    where
        F: Fn(Vec<Uuid>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(Uuid, bool)>, E>>,
        E: From<RedisError>,
    {
        let bucket: Bucket = bucket.into();
        let (mut kept, mut units) = (0, 0);
        let mut cursor = "0".to_owned();
        loop {
            let (next, page) = self.ledger_page(bucket, &cursor).await?;
            let order_nos: Vec<Uuid> = page.into_iter().map(|(o, _)| o).collect();
            if !order_nos.is_empty() {
                let flags = persisted(order_nos).await?;
                let (k, u) = self.rebuild_ledger(bucket, &flags).await?;
                kept += k;
                units += u;
            }
            if next == "0" {
                return Ok((kept, units));
            }
            cursor = next;
        }
    }
}
