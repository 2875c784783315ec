//! A batch's admission: just before it persists, a writer asks Redis whether
//! each intent is still accounted for.
//!
//! Common case, one `missing.lua` call per stock bucket that finds every intent
//! still pending in the ledger. Only intents missing from it go through
//! `admit.lua` (already settled, or lost by a Redis restart: without
//! persistence, or the last second of an `everysec` AOF), which takes their
//! stock again or refuses them. An event Redis does not hold at all (lost,
//! not rebuilt yet) refuses nothing: the rebuild, which waits for the
//! batch's row lock, counts what it commits.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use crate::{
    intent::Intent,
    redis::{Admission, Bucket, Redis, RedisError},
};

/// The order_nos that lost their stock to a Redis restart and found none left.
pub async fn refused(redis: &Redis, batch: &[Intent]) -> Result<HashSet<Uuid>, RedisError> {
    let mut per_bucket: BTreeMap<Bucket, Vec<Intent>> = BTreeMap::new();
    for intent in batch {
        per_bucket.entry(intent.bucket()).or_default().push(*intent);
    }
    let mut refused = HashSet::new();
    for (bucket, intents) in per_bucket {
        let event_id = bucket.event_id;
        let suspect = redis.missing_from_ledger(bucket, &intents).await?;
        if suspect.is_empty() {
            continue;
        }
        if let Admission::Decided(states) = redis.admit(bucket, &suspect).await? {
            for (order_no, state) in states {
                match state {
                    0 => {
                        refused.insert(order_no);
                    }
                    2 => {
                        tracing::warn!(%order_no, event_id, "intent lost by redis took its stock again")
                    }
                    _ => {}
                }
            }
        }
    }
    metrics::counter!("seckill_intents_refused_total").increment(refused.len() as u64);
    Ok(refused)
}
