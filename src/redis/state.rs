//! An event's sale state read in bounded steps, whatever the size of the sale:
//! `state.lua` (the stock and the counters the scripts keep, O(1)), the
//! ledger and the buyers walked with HSCAN cursors a page at a time, and
//! `buyers.lua` (a batch of shoppers' units and pending intents at one
//! instant). No call here holds Redis longer than a small page costs.

use crate::bucket::Buckets;
use fred::{prelude::*, types::Value};
use uuid::Uuid;

use super::{keys::Bucket, Redis, RedisError};
use crate::intent::LedgerEntry;

/// Shoppers per page of a walk of Postgres's buyers (keyset pages).
pub const PAGE: u32 = 100;

/// Entries per `HSCAN` page of Redis's buyers or ledger (`COUNT`). On a hash
/// of 10 M buyers on the 2-vCPU reference VM a page of 100 took 205 µs at
/// the median and up to 420 µs on an idle machine (each entry a cache
/// miss); a page of 32 took 84 µs and up to 190 µs.
pub const SCAN_COUNT: u32 = 32;

/// An event's counters at one instant (`state.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaleState {
    /// Redis server time of the read.
    pub at_ms: i64,
    pub loaded: bool,
    pub stock_left: Option<i64>,
    pub total: i64,
    /// Units of non-failed orders (the sum of the buyers' counts); `None`
    /// for a sale loaded by an engine that did not keep the counters.
    pub held: Option<i64>,
    /// Units of the intents pending in the ledger.
    pub pending_units: i64,
    /// Intents pending in the ledger.
    pub pending: i64,
    /// Units this bucket gave to another whose arrival is not confirmed.
    pub in_flight: i64,
    /// Units received from / given to other buckets of the event.
    pub moved_in: i64,
    pub moved_out: i64,
    /// Bumped by every transfer step on this bucket.
    pub transfer_seq: i64,
}

impl SaleState {
    /// Loaded with the counters the scripts keep: anything else is a sale
    /// (or a bucket) Redis lost, to be rebuilt.
    pub fn intact(&self) -> bool {
        self.loaded && self.held.is_some()
    }

    /// Several buckets' counters as one event's: loaded only if all are,
    /// counters summed, and a unit in flight between two buckets counted as
    /// stock (and in the total): it is unsold, on its way to one of them
    /// (`in_flight` as [`Redis::bucket_state`] reads it: not landed yet).
    pub fn merged(states: &[SaleState]) -> SaleState {
        let mut sum = SaleState {
            at_ms: i64::MAX,
            loaded: true,
            stock_left: Some(0),
            total: 0,
            held: Some(0),
            pending_units: 0,
            pending: 0,
            in_flight: 0,
            moved_in: 0,
            moved_out: 0,
            transfer_seq: 0,
        };
        for s in states {
            sum.at_ms = sum.at_ms.min(s.at_ms);
            sum.loaded &= s.loaded;
            sum.stock_left = sum
                .stock_left
                .zip(s.stock_left)
                .map(|(a, b)| a + b + s.in_flight);
            sum.total += s.total + s.in_flight;
            sum.held = sum.held.zip(s.held).map(|(a, b)| a + b);
            sum.pending_units += s.pending_units;
            sum.pending += s.pending;
            sum.moved_in += s.moved_in;
            sum.moved_out += s.moved_out;
            sum.transfer_seq += s.transfer_seq;
        }
        sum
    }
}

/// A shopper's units and pending intents at one instant (`buyers.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuyerState {
    pub user_id: i64,
    pub held: i64,
    /// (order_no, quantity) of their intents still pending in the ledger.
    pub pending: Vec<(Uuid, i64)>,
}

impl Redis {
    /// Runs `state.lua`.
    pub async fn sale_state(&self, bucket: impl Into<Bucket>) -> Result<SaleState, RedisError> {
        let bucket: Bucket = bucket.into();
        let k = self.keys.event(bucket);
        let reply = self
            .run(&self.scripts.state, vec![k.meta, k.stock, k.ledger], vec![])
            .await?;
        let bad = || RedisError::Protocol(format!("state.lua returned {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        let int = |i: usize| items.get(i).and_then(Value::as_i64).ok_or_else(bad);
        let held = int(4)?;
        Ok(SaleState {
            at_ms: int(0)?,
            loaded: int(1)? == 1,
            stock_left: items
                .get(2)
                .and_then(Value::as_string)
                .and_then(|s| s.parse().ok()),
            total: int(3)?,
            held: (held >= 0).then_some(held),
            pending_units: int(5)?,
            pending: int(6)?,
            in_flight: int(7)?,
            moved_in: int(8)?,
            moved_out: int(9)?,
            transfer_seq: int(10)?,
        })
    }

    /// The whole event's counters ([`SaleState::merged`] of its buckets).
    pub async fn event_state(&self, event: impl Into<Buckets>) -> Result<SaleState, RedisError> {
        let event: Buckets = event.into();
        let mut states = Vec::new();
        for bucket in event.iter() {
            states.push(self.bucket_state(bucket).await?);
        }
        Ok(SaleState::merged(&states))
    }

    /// Each bucket's counters, in index order.
    pub async fn bucket_states(
        &self,
        event: impl Into<Buckets>,
    ) -> Result<Vec<(super::Bucket, SaleState)>, RedisError> {
        let event: Buckets = event.into();
        let mut states = Vec::new();
        for bucket in event.iter() {
            states.push((bucket, self.bucket_state(bucket).await?));
        }
        Ok(states)
    }

    /// One page of the ledger from `cursor` ("0" to start); the next cursor
    /// ("0" when the walk is over) and the entries.
    pub async fn ledger_page(
        &self,
        bucket: impl Into<Bucket>,
        cursor: &str,
    ) -> Result<(String, Vec<(Uuid, LedgerEntry)>), RedisError> {
        let bucket: Bucket = bucket.into();
        let (next, flat) = self
            .hscan_page(self.keys.event(bucket).ledger, cursor)
            .await?;
        let entries = flat
            .chunks_exact(2)
            .filter_map(|c| Some((c[0].parse().ok()?, LedgerEntry::parse(&c[1])?)))
            .collect();
        Ok((next, entries))
    }

    /// One page of the event's buyers (user ids) from `cursor`.
    pub async fn buyers_page(
        &self,
        bucket: impl Into<Bucket>,
        cursor: &str,
    ) -> Result<(String, Vec<i64>), RedisError> {
        let bucket: Bucket = bucket.into();
        let (next, flat) = self
            .hscan_page(self.keys.event(bucket).bought, cursor)
            .await?;
        let users = flat
            .chunks_exact(2)
            .filter_map(|c| c[0].parse().ok())
            .collect();
        Ok((next, users))
    }

    async fn hscan_page(
        &self,
        key: String,
        cursor: &str,
    ) -> Result<(String, Vec<String>), RedisError> {
        let reply: Value = self
            .client()
            .custom(
                fred::cmd!("HSCAN"),
                vec![
                    key,
                    cursor.to_owned(),
                    "COUNT".into(),
                    SCAN_COUNT.to_string(),
                ],
            )
            .await?;
        let bad = || RedisError::Protocol("HSCAN reply".into());
        let Value::Array(mut parts) = reply else {
            return Err(bad());
        };
        if parts.len() != 2 {
            return Err(bad());
        }
        let Value::Array(flat) = parts.pop().ok_or_else(bad)? else {
            return Err(bad());
        };
        let next = parts[0].as_string().ok_or_else(bad)?;
        Ok((
            next,
            flat.into_iter()
                .map(|v| v.as_string().unwrap_or_default())
                .collect(),
        ))
    }

    /// Runs `buyers.lua` for a batch of shoppers: (Redis time, their state).
    pub async fn buyers_at(
        &self,
        bucket: impl Into<Bucket>,
        users: &[i64],
    ) -> Result<(i64, Vec<BuyerState>), RedisError> {
        let bucket: Bucket = bucket.into();
        let k = self.keys.event(bucket);
        let reply = self
            .run(
                &self.scripts.buyers,
                vec![k.bought, k.orders, k.ledger],
                users.iter().map(|u| Value::from(*u)).collect(),
            )
            .await?;
        let bad = || RedisError::Protocol("buyers.lua reply".into());
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        let mut items = items.into_iter();
        let at_ms = items.next().and_then(|v| v.as_i64()).ok_or_else(bad)?;
        let mut buyers = Vec::with_capacity(users.len());
        for item in items {
            let Value::Array(group) = item else {
                return Err(bad());
            };
            let [user, held, Value::Array(pending)] =
                <[Value; 3]>::try_from(group).map_err(|_| bad())?
            else {
                return Err(bad());
            };
            let pending = pending
                .chunks_exact(2)
                .filter_map(|c| Some((c[0].as_string()?.parse().ok()?, c[1].as_i64()?)))
                .collect();
            buyers.push(BuyerState {
                user_id: user
                    .as_string()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| user.as_i64())
                    .ok_or_else(bad)?,
                held: held.as_i64().ok_or_else(bad)?,
                pending,
            });
        }
        Ok((at_ms, buyers))
    }
}
