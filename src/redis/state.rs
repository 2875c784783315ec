//! An event's sale state read in bounded steps, whatever the size of the sale:
//! `state.lua` (the stock and the counters the scripts keep, O(1)), the
//! ledger and the buyers walked with HSCAN cursors a page at a time, and
//! `buyers.lua` (a batch of shoppers' units and pending intents at one
//! instant). No call here holds Redis longer than a small page costs.

use fred::{prelude::*, types::Value};
use uuid::Uuid;

use super::{Redis, RedisError};
use crate::intent::LedgerEntry;

/// Shoppers or ledger entries read per page.
pub const PAGE: u32 = 100;

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
    pub async fn sale_state(&self, event_id: i64) -> Result<SaleState, RedisError> {
        let k = self.keys.event(event_id);
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
        })
    }

    /// One page of the ledger from `cursor` ("0" to start); the next cursor
    /// ("0" when the walk is over) and the entries.
    pub async fn ledger_page(
        &self,
        event_id: i64,
        cursor: &str,
    ) -> Result<(String, Vec<(Uuid, LedgerEntry)>), RedisError> {
        let (next, flat) = self
            .hscan_page(self.keys.event(event_id).ledger, cursor)
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
        event_id: i64,
        cursor: &str,
    ) -> Result<(String, Vec<i64>), RedisError> {
        let (next, flat) = self
            .hscan_page(self.keys.event(event_id).bought, cursor)
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
                vec![key, cursor.to_owned(), "COUNT".into(), PAGE.to_string()],
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
        event_id: i64,
        users: &[i64],
    ) -> Result<(i64, Vec<BuyerState>), RedisError> {
        let k = self.keys.event(event_id);
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
