//! Plain reads of an event's live state (stock, ledger, buyers), the set of
//! events loaded into Redis, and closing an ended event out of Redis.

use crate::bucket::Buckets;
use std::collections::HashMap;

use fred::prelude::*;
use uuid::Uuid;

use super::{keys::Bucket, Redis, RedisError};
use crate::intent::LedgerEntry;

impl Redis {
    /// Units left, or None when the event is not in Redis.
    pub async fn stock_left(&self, bucket: impl Into<Bucket>) -> Result<Option<i64>, RedisError> {
        let bucket: Bucket = bucket.into();
        Ok(self.client().get(self.keys.event(bucket).stock).await?)
    }

    /// Units left in all of an event's buckets (those in flight between
    /// two are on their way to one: counted once they land), or None when
    /// no bucket is in Redis. One GET for a one-bucket event.
    pub async fn event_stock_left(
        &self,
        event: impl Into<Buckets>,
    ) -> Result<Option<i64>, RedisError> {
        let event: Buckets = event.into();
        let mut left: Option<i64> = None;
        for bucket in event.iter() {
            if let Some(stock) = self.stock_left(bucket).await? {
                left = Some(left.unwrap_or(0) + stock);
            }
        }
        Ok(left)
    }

    /// Whether the event's sale parameters are loaded.
    pub async fn is_loaded(&self, bucket: impl Into<Bucket>) -> Result<bool, RedisError> {
        let bucket: Bucket = bucket.into();
        let n: i64 = self.client().exists(self.keys.event(bucket).meta).await?;
        Ok(n == 1)
    }

    /// Every pending intent of an event, in one read: for tests and small
    /// events (the engine walks the ledger with [`Redis::ledger_page`]).
    pub async fn ledger(
        &self,
        bucket: impl Into<Bucket>,
    ) -> Result<Vec<(Uuid, LedgerEntry)>, RedisError> {
        let bucket: Bucket = bucket.into();
        let raw: HashMap<String, String> = self
            .client()
            .hgetall(self.keys.event(bucket).ledger)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(order_no, entry)| {
                Some((order_no.parse().ok()?, LedgerEntry::parse(&entry)?))
            })
            .collect())
    }

    /// Pending intents for some order_nos of one event.
    pub async fn ledger_entries(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<Vec<(Uuid, LedgerEntry)>, RedisError> {
        let bucket: Bucket = bucket.into();
        if order_nos.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = order_nos.iter().map(Uuid::to_string).collect();
        let raw: Vec<Option<String>> = self
            .client()
            .hmget(self.keys.event(bucket).ledger, fields)
            .await?;
        Ok(order_nos
            .iter()
            .zip(raw)
            .filter_map(|(o, r)| Some((*o, LedgerEntry::parse(r.as_deref()?)?)))
            .collect())
    }

    /// Which of these refunded order_nos have their units back (members of
    /// the event's `returned` set), in reads of at most 1,000.
    pub async fn returned_among(
        &self,
        bucket: impl Into<Bucket>,
        order_nos: &[Uuid],
    ) -> Result<Vec<bool>, RedisError> {
        let bucket: Bucket = bucket.into();
        let key = self.keys.event(bucket).returned;
        let mut out = Vec::with_capacity(order_nos.len());
        for chunk in order_nos.chunks(1_000) {
            let members: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let flags: Vec<i64> = self.client().smismember(&key, members).await?;
            out.extend(flags.into_iter().map(|f| f == 1));
        }
        Ok(out)
    }

    /// [`Self::ledger_entries`] over every bucket of the event (for callers
    /// that do not know the orders' shoppers).
    pub async fn event_ledger_entries(
        &self,
        event: impl Into<Buckets>,
        order_nos: &[Uuid],
    ) -> Result<Vec<(Uuid, LedgerEntry)>, RedisError> {
        let event: Buckets = event.into();
        let mut found = Vec::new();
        for bucket in event.iter() {
            found.extend(self.ledger_entries(bucket, order_nos).await?);
        }
        Ok(found)
    }

    /// [`Self::returned_among`] over every bucket of the event: whether
    /// each order's units are back in any of them.
    pub async fn event_returned_among(
        &self,
        event: impl Into<Buckets>,
        order_nos: &[Uuid],
    ) -> Result<Vec<bool>, RedisError> {
        let event: Buckets = event.into();
        let mut back = vec![false; order_nos.len()];
        for bucket in event.iter() {
            for (seen, flag) in back
                .iter_mut()
                .zip(self.returned_among(bucket, order_nos).await?)
            {
                *seen |= flag;
            }
        }
        Ok(back)
    }

    /// The buyer's order_nos for an event, each with whether it failed.
    pub async fn buyer_orders(
        &self,
        bucket: impl Into<Bucket>,
        user_id: i64,
    ) -> Result<Vec<(Uuid, bool)>, RedisError> {
        let bucket: Bucket = bucket.into();
        let raw: Option<String> = self
            .client()
            .hget(self.keys.event(bucket).orders, user_id)
            .await?;
        Ok(parse_order_list(raw.as_deref().unwrap_or("")))
    }

    /// Units held per buyer (user_id -> units), in one read: for tests and
    /// small events (the engine walks buyers with [`Redis::buyers_page`]).
    pub async fn buyers(&self, bucket: impl Into<Bucket>) -> Result<HashMap<i64, i64>, RedisError> {
        let bucket: Bucket = bucket.into();
        let raw: HashMap<String, i64> = self
            .client()
            .hgetall(self.keys.event(bucket).bought)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(u, q)| Some((u.parse().ok()?, q)))
            .collect())
    }

    /// Removes an ended event's keys (UNLINK: a hash of millions of buyers
    /// is freed in the background, not while Redis serves) and its place in
    /// the live set.
    pub async fn close_out(&self, event: impl Into<Buckets>) -> Result<(), RedisError> {
        let event: Buckets = event.into();
        for bucket in event.iter() {
            for key in self.keys.event(bucket).every() {
                let _: i64 = self.client().unlink(key).await?;
            }
        }
        let _: i64 = self
            .client()
            .srem(self.keys.live_events(), event.event_id)
            .await?;
        Ok(())
    }

    pub async fn add_live_event(&self, event_id: i64) -> Result<(), RedisError> {
        let _: i64 = self
            .client()
            .sadd(self.keys.live_events(), event_id)
            .await?;
        Ok(())
    }

    /// Event ids currently loaded into Redis.
    pub async fn live_events(&self) -> Result<Vec<i64>, RedisError> {
        Ok(self.client().smembers(self.keys.live_events()).await?)
    }
}

/// Parses a buyer's order list: "a,b!,c" -> [(a,false),(b,true),(c,false)].
pub fn parse_order_list(raw: &str) -> Vec<(Uuid, bool)> {
    raw.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s.strip_suffix('!') {
            Some(failed) => Some((failed.parse().ok()?, true)),
            None => Some((s.parse().ok()?, false)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_list_marks_failed() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(
            parse_order_list(&format!("{a},{b}!")),
            vec![(a, false), (b, true)]
        );
        assert!(parse_order_list("").is_empty());
    }
}
