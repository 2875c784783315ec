//! `snapshot.lua`: one consistent read of an event's sale state, with the
//! Redis server time it was taken at (no purchase interleaves with it).

use std::collections::HashMap;

use fred::types::Value;
use uuid::Uuid;

use super::{Redis, RedisError};
use crate::intent::LedgerEntry;

/// An event's Redis state at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Redis server time of the read.
    pub at_ms: i64,
    pub loaded: bool,
    pub stock_left: Option<i64>,
    pub bought: HashMap<i64, i64>,
    pub ledger: Vec<(Uuid, LedgerEntry)>,
}

impl Redis {
    pub async fn snapshot(&self, event_id: i64) -> Result<Snapshot, RedisError> {
        let k = self.keys.event(event_id);
        let reply = self
            .run(
                &self.scripts.snapshot,
                vec![k.meta, k.stock, k.bought, k.ledger],
                vec![],
            )
            .await?;
        Snapshot::decode(reply)
    }
}

impl Snapshot {
    fn decode(reply: Value) -> Result<Self, RedisError> {
        let bad = || RedisError::Protocol("snapshot.lua reply".into());
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        if items.len() != 5 {
            return Err(bad());
        }
        let pairs = |v: Value| -> Result<Vec<(String, String)>, RedisError> {
            let Value::Array(flat) = v else {
                return Err(bad());
            };
            let flat: Vec<String> = flat
                .into_iter()
                .map(|x| x.as_string().unwrap_or_default())
                .collect();
            Ok(flat
                .chunks_exact(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect())
        };
        let ledger = pairs(items.pop().ok_or_else(bad)?)?;
        let bought = pairs(items.pop().ok_or_else(bad)?)?;
        // Absent is "", so a (wrongly) negative stock still reads as a number.
        let stock = items[2].as_string().and_then(|s| s.parse::<i64>().ok());
        Ok(Self {
            at_ms: items[0].as_i64().ok_or_else(bad)?,
            loaded: items[1].as_i64() == Some(1),
            stock_left: stock,
            bought: bought
                .into_iter()
                .filter_map(|(u, q)| Some((u.parse().ok()?, q.parse().ok()?)))
                .collect(),
            ledger: ledger
                .into_iter()
                .filter_map(|(o, e)| Some((o.parse().ok()?, LedgerEntry::parse(&e)?)))
                .collect(),
        })
    }
}
