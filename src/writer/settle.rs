//! Settling persisted orders in Redis: confirmed ones are acked (they leave
//! the ledger), failed ones are released (their units back on sale) or, for
//! `stock_lost` orders whose units never existed, discarded. Used after every
//! writer commit and by the reconciler for orders it finds persisted.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{
    intent::{Settled, STOCK_LOST},
    redis::{Redis, RedisError},
};

/// One persisted order and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub event_id: i64,
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
    let mut per_event: BTreeMap<i64, PerEvent> = BTreeMap::new();
    for s in settlements {
        let slot = per_event.entry(s.event_id).or_default();
        match &s.settled {
            Settled::Confirmed => slot.acks.push(s.order_no),
            Settled::Failed(reason) if reason == STOCK_LOST => slot.discards.push(s.order_no),
            Settled::Failed(_) => slot.releases.push(s.order_no),
        }
    }
    for &(event_id, unsold) in oversold {
        redis.cap_stock(event_id, unsold).await?;
    }
    let mut restocked = Vec::new();
    for (event_id, orders) in per_event {
        redis.ack(event_id, &orders.acks).await?;
        redis.discard(event_id, &orders.discards).await?;
        if redis.release(event_id, &orders.releases).await? > 0 {
            redis.publish_stock_back(event_id).await?;
            restocked.push(event_id);
        }
    }
    Ok(restocked)
}
