//! The operator's changes to a live sale: `sale.lua` (the parameters
//! purchase.lua decides with: window, pause, price, limit) and `adjust.lua`
//! (a stock adjustment applied once). The callers hold the fence
//! ([`crate::lifecycle`]).

use crate::bucket::Buckets;
use fred::{prelude::*, types::Value};

use super::{keys::Bucket, Redis, RedisError, SaleParams};

/// What `sale.lua` did: whether the event was loaded, Redis's time, and the
/// window after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaleWrite {
    pub loaded: bool,
    pub now_ms: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
}

/// What `adjust.lua` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdjustOutcome {
    /// The event is not loaded in Redis; nothing written.
    NotLoaded,
    /// Applied (now, or before: `replay`); the stock left and total after.
    Applied {
        stock_left: i64,
        total: i64,
        replay: bool,
    },
    /// A withdrawal of more than the stock left (now, or before: `replay`).
    Refused { stock_left: i64, replay: bool },
}

/// The sale parameters Redis holds for an event (a plain read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedParams {
    pub price: i64,
    pub per_user_limit: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub paused: bool,
}

impl Redis {
    /// Runs `sale.lua` "set" on every bucket of the event: the parameters
    /// written as they are.
    pub async fn set_sale(
        &self,
        event: impl Into<Buckets>,
        sale: SaleParams,
    ) -> Result<SaleWrite, RedisError> {
        let event: Buckets = event.into();
        let mut first = None;
        for bucket in event.iter() {
            let written = self.set_bucket_sale(bucket, sale).await?;
            first.get_or_insert(written);
        }
        Ok(first.expect("an event has at least one bucket"))
    }

    /// `sale.lua` "set" on one bucket.
    pub async fn set_bucket_sale(
        &self,
        bucket: Bucket,
        sale: SaleParams,
    ) -> Result<SaleWrite, RedisError> {
        self.sale_script(
            bucket,
            vec![
                Value::from("set"),
                Value::from(sale.price),
                Value::from(sale.per_user_limit as i64),
                Value::from(sale.starts_ms),
                Value::from(sale.ends_ms),
                Value::from(if sale.paused { "1" } else { "0" }),
            ],
        )
        .await
    }

    /// Runs `sale.lua` "end": the sale ends now, by Redis's clock. The
    /// first bucket decides the window; the others get the same (their
    /// clocks read later, so "min(ends, now)" keeps the first's end).
    pub async fn end_sale(
        &self,
        event: impl Into<Buckets>,
        starts_ms: i64,
        ends_ms: i64,
    ) -> Result<SaleWrite, RedisError> {
        let event: Buckets = event.into();
        let (mut starts_ms, mut ends_ms) = (starts_ms, ends_ms);
        let mut first = None;
        for bucket in event.iter() {
            let written = self
                .sale_script(
                    bucket,
                    vec![
                        Value::from("end"),
                        Value::from(starts_ms),
                        Value::from(ends_ms),
                    ],
                )
                .await?;
            (starts_ms, ends_ms) = (written.starts_ms, written.ends_ms);
            first.get_or_insert(written);
        }
        Ok(first.expect("an event has at least one bucket"))
    }

    /// Runs `sale.lua` "pause" on every bucket: only the pause flag
    /// (`paused` false: resume).
    pub async fn pause_sale(
        &self,
        event: impl Into<Buckets>,
        paused: bool,
    ) -> Result<SaleWrite, RedisError> {
        let event: Buckets = event.into();
        let mut first = None;
        for bucket in event.iter() {
            let written = self
                .sale_script(
                    bucket,
                    vec![
                        Value::from("pause"),
                        Value::from(if paused { "1" } else { "0" }),
                    ],
                )
                .await?;
            first.get_or_insert(written);
        }
        Ok(first.expect("an event has at least one bucket"))
    }

    async fn sale_script(
        &self,
        bucket: impl Into<Bucket>,
        args: Vec<Value>,
    ) -> Result<SaleWrite, RedisError> {
        let bucket: Bucket = bucket.into();
        let reply = self
            .run(&self.scripts.sale, vec![self.keys.event(bucket).meta], args)
            .await?;
        let bad = || RedisError::Protocol(format!("sale.lua returned {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        let int = |i: usize| items.get(i).and_then(Value::as_i64).ok_or_else(bad);
        Ok(SaleWrite {
            loaded: int(0)? == 1,
            now_ms: int(1)?,
            starts_ms: int(2)?,
            ends_ms: int(3)?,
        })
    }

    /// Runs `adjust.lua` for adjustment `id`.
    pub async fn adjust_stock(
        &self,
        bucket: impl Into<Bucket>,
        id: i64,
        delta: i64,
    ) -> Result<AdjustOutcome, RedisError> {
        let bucket: Bucket = bucket.into();
        let k = self.keys.event(bucket);
        let reply = self
            .run(
                &self.scripts.adjust,
                vec![k.meta, k.stock],
                vec![Value::from(id), Value::from(delta)],
            )
            .await?;
        let bad = || RedisError::Protocol(format!("adjust.lua returned {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        let int = |i: usize| items.get(i).and_then(Value::as_i64).ok_or_else(bad);
        Ok(match int(0)? {
            0 => AdjustOutcome::NotLoaded,
            code @ (1 | 2) => AdjustOutcome::Applied {
                stock_left: int(1)?,
                total: int(2)?,
                replay: code == 2,
            },
            code @ (3 | 4) => AdjustOutcome::Refused {
                stock_left: int(1)?,
                replay: code == 4,
            },
            _ => return Err(bad()),
        })
    }

    /// The sale parameters Redis holds; `None` when the event is not loaded.
    pub async fn loaded_params(
        &self,
        bucket: impl Into<Bucket>,
    ) -> Result<Option<LoadedParams>, RedisError> {
        let bucket: Bucket = bucket.into();
        let raw: Vec<Option<i64>> = self
            .client()
            .hmget(
                self.keys.event(bucket).meta,
                vec!["price", "limit", "starts_ms", "ends_ms", "paused"],
            )
            .await?;
        let [Some(price), Some(limit), Some(starts_ms), Some(ends_ms), paused] = raw[..] else {
            return Ok(None);
        };
        Ok(Some(LoadedParams {
            price,
            per_user_limit: limit,
            starts_ms,
            ends_ms,
            paused: paused == Some(1),
        }))
    }
}
