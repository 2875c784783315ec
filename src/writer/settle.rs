//! Settling persisted orders in Redis: confirmed ones are acked (they leave
//! the ledger), failed ones are released (their units back on sale) or, for
//! `stock_lost` orders whose units never existed, discarded. Used after every
//! writer commit and by the reconciler for orders it finds persisted.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{
    intent::{Settled, STOCK_LOST},
    redis::{Bucket, Redis, RedisError},
};

/// One persisted order and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub event_id: i64,
    /// The bucket whose ledger holds the intent (the shopper's home).
    pub bucket: Bucket,
    pub order_no: Uuid,
    pub settled: Settled,
}

/// Settles persisted orders in Redis, once each (every step is a no-op for an
/// order no longer in the ledger). `oversold`: events whose Redis stock is to
/// be capped at the units Postgres has left unsold. Returns the events that
/// got stock back (announced to every engine).
pub async fn settle(
    redis: &Redis,
    settlements: &[Settlement],
    oversold: &[(i64, i64)],
) -> Result<Vec<i64>, RedisError> {
    #[derive(Default)]
    struct PerEvent {
        acks: Vec<Uuid>,
        releases: Vec<Uuid>,
        discards: Vec<Uuid>,
    }
    let mut per_bucket: BTreeMap<Bucket, PerEvent> = BTreeMap::new();
    for s in settlements {
        let slot = per_bucket.entry(s.bucket).or_default();
        match &s.settled {
            Settled::Confirmed => slot.acks.push(s.order_no),
            Settled::Failed(reason) if reason == STOCK_LOST => slot.discards.push(s.order_no),
            Settled::Failed(_) => slot.releases.push(s.order_no),
        }
    }
    for &(event_id, unsold) in oversold {
        // Each bucket's stock is at most what Postgres has unsold in all
        // (a bound on each, never below a real unit; the reconciler's
        // per-bucket repair settles the rest once the sale is still).
        let of = settlements
            .iter()
            .find(|s| s.event_id == event_id)
            .map_or(1, |s| s.bucket.of);
        for bucket in Bucket::all(event_id, of) {
            redis.cap_stock(bucket, unsold).await?;
        }
    }
    let mut restocked = Vec::new();
    for (bucket, orders) in per_bucket {
        redis.ack(bucket, &orders.acks).await?;
        redis.discard(bucket, &orders.discards).await?;
        if redis.release(bucket, &orders.releases).await? > 0 {
            redis.publish_stock_back(bucket.event_id).await?;
            restocked.push(bucket.event_id);
        }
    }
    restocked.dedup();
    Ok(restocked)
}
