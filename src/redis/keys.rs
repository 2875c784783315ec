//! The only place Redis key strings are built.
//!
//! Every key of one event carries the hash tag `{<event_id>}`, so a script
//! that touches them all stays on one cluster slot; every key starts with
//! `SECKILL_REDIS_PREFIX`, so deployments and tests can share a Redis.

/// Key builder for one deployment prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The keys of one event, in the order the event scripts take them.
#[derive(Clone, Debug)]
pub struct EventKeys {
    /// hash: price, limit, starts_ms, ends_ms, total
    pub meta: String,
    /// string: units left
    pub stock: String,
    /// hash: user_id -> units held by non-failed orders
    pub bought: String,
    /// hash: user_id -> comma-separated order_nos ("!" marks a failed one)
    pub orders: String,
    /// hash: order_no -> "user_id:quantity:amount:accepted_ms", pending intents
    pub ledger: String,
    /// set: order_nos of refunded orders whose units came back (refund.lua)
    pub returned: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn event(&self, event_id: i64) -> EventKeys {
        let p = &self.prefix;
        EventKeys {
            meta: format!("{p}:{{{event_id}}}:meta"),
            stock: format!("{p}:{{{event_id}}}:stock"),
            bought: format!("{p}:{{{event_id}}}:bought"),
            orders: format!("{p}:{{{event_id}}}:orders"),
            ledger: format!("{p}:{{{event_id}}}:ledger"),
            returned: format!("{p}:{{{event_id}}}:returned"),
        }
    }

    /// Set of event ids loaded into Redis (preheated and not yet closed out).
    pub fn live_events(&self) -> String {
        format!("{}:live-events", self.prefix)
    }

    /// A shopper's idempotency record; keys are scoped per user.
    pub fn idempotency(&self, user_id: i64, key: &str) -> String {
        format!("{}:idem:{user_id}:{key}", self.prefix)
    }

    /// Pub/sub channel announcing "stock came back for event N".
    pub fn stock_back_channel(&self) -> String {
        format!("{}:stock-back", self.prefix)
    }

    /// The reconciler's leader lock.
    pub fn reconcile_lock(&self) -> String {
        format!("{}:reconciler-lock", self.prefix)
    }
}

impl EventKeys {
    /// [`Self::all`] and the `returned` set: the keys refund.lua takes.
    pub fn with_returned(&self) -> Vec<String> {
        let mut keys = self.all();
        keys.push(self.returned.clone());
        keys
    }

    /// Every key of the event, for its close-out.
    pub fn every(&self) -> Vec<String> {
        self.with_returned()
    }

    /// meta, stock, bought, orders, ledger: the order every sale script takes.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.meta.clone(),
            self.stock.clone(),
            self.bought.clone(),
            self.orders.clone(),
            self.ledger.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_share_one_hash_tag_and_the_prefix() {
        let keys = Keys::new("t1").event(42);
        for key in keys.every() {
            assert!(key.starts_with("t1:{42}:"), "{key}");
        }
    }
}
