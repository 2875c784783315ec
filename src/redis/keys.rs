//! The only place Redis key strings are built.
//!
//! Every key of one stock bucket carries the bucket's hash tag ([`crate::bucket`]), so a script
//! that touches them all stays on one cluster slot; every key starts with
//! `SECKILL_REDIS_PREFIX`, so deployments and tests can share a Redis.

pub use crate::bucket::{Bucket, MAX_BUCKETS};

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
    /// hash: transfer id -> "target_index:units": units this bucket gave
    /// away whose arrival is not confirmed yet (transfer.lua)
    pub transfers_out: String,
    /// set: ids of transfers this bucket received (applied once each)
    pub transfers_in: String,
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

    /// The keys of one bucket (an event id: its only bucket).
    pub fn event(&self, at: impl Into<Bucket>) -> EventKeys {
        let p = &self.prefix;
        let tag = at.into().hash_tag();
        EventKeys {
            meta: format!("{p}:{{{tag}}}:meta"),
            stock: format!("{p}:{{{tag}}}:stock"),
            bought: format!("{p}:{{{tag}}}:bought"),
            orders: format!("{p}:{{{tag}}}:orders"),
            ledger: format!("{p}:{{{tag}}}:ledger"),
            returned: format!("{p}:{{{tag}}}:returned"),
            transfers_out: format!("{p}:{{{tag}}}:transfers-out"),
            transfers_in: format!("{p}:{{{tag}}}:transfers-in"),
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

    /// The outbox relay's leader lock: one process publishes at a time.
    pub fn outbox_lock(&self) -> String {
        format!("{}:outbox-relay-lock", self.prefix)
    }
}

impl EventKeys {
    /// [`Self::all`] and the `returned` set: the keys refund.lua takes.
    pub fn with_returned(&self) -> Vec<String> {
        let mut keys = self.all();
        keys.push(self.returned.clone());
        keys
    }

    /// Every key of the bucket, for its close-out.
    pub fn every(&self) -> Vec<String> {
        let mut keys = self.with_returned();
        keys.push(self.transfers_out.clone());
        keys.push(self.transfers_in.clone());
        keys
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

    #[test]
    fn buckets_spread_over_equal_slot_ranges_and_homes_are_stable() {
        for of in [2u16, 3, 6, 64] {
            for bucket in Bucket::all(7, of) {
                let slot = bucket.slot() as u32;
                let width = crate::bucket::SLOTS / of as u32;
                assert!(
                    slot / width == bucket.index as u32
                        || (slot * of as u32 / crate::bucket::SLOTS) == bucket.index as u32,
                    "bucket {bucket:?} on slot {slot}"
                );
                for key in Keys::new("t").event(bucket).every() {
                    assert_eq!(
                        fred::util::redis_keyslot(key.as_bytes()),
                        bucket.slot(),
                        "{key}"
                    );
                }
            }
        }
        assert_eq!(Bucket::home(7, 3, 10).index, 1);
        assert_eq!(Bucket::home(7, 3, -1).index, 2);
        assert_eq!(Bucket::home(7, 1, 10), Bucket::whole(7));
        let others: Vec<u16> = Bucket::new(7, 1, 3).others().map(|b| b.index).collect();
        assert_eq!(others, vec![2, 0]);
    }
}
