//! Redis: the live sale state of every preheated event.
//!
//! One [`Redis`] handle wraps a fred connection pool (single node or Redis
//! Cluster), the key builder and the loaded scripts. Each method is one round
//! trip; anything that must be atomic is a script in `lua/`.

pub mod keys;
pub mod scripts;

use std::{sync::Arc, time::Duration};

use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{config::ReconnectPolicy, Value},
};
use uuid::Uuid;

pub use keys::{EventKeys, Keys};
pub use scripts::{LuaScript, PurchaseOutcome, Scripts};

/// A Redis failure; every variant answers 503 at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] fred::error::Error),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

/// One pending order intent as written to an event's ledger by `purchase.lua`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub user_id: i64,
    pub quantity: i32,
    pub amount: i64,
    pub accepted_ms: i64,
}

impl LedgerEntry {
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let entry = Self {
            user_id: parts.next()?.parse().ok()?,
            quantity: parts.next()?.parse().ok()?,
            amount: parts.next()?.parse().ok()?,
            accepted_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(entry)
    }
}

/// Sale parameters as loaded into an event's meta hash.
#[derive(Clone, Copy, Debug)]
pub struct SaleParams {
    pub price: i64,
    pub per_user_limit: i32,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub stock_total: i64,
}

/// An order as Postgres knows it, for a rebuild.
#[derive(Clone, Copy, Debug)]
pub struct PersistedOrder {
    pub order_no: Uuid,
    pub user_id: i64,
    pub quantity: i32,
    pub failed: bool,
}

/// What `admit.lua` said of a batch.
#[derive(Debug)]
pub enum Admission {
    /// The event is not in Redis (lost and not rebuilt yet): wait.
    NotLoaded,
    /// Per order_no: 1 pending, 2 re-taken after a loss, 0 refused.
    Decided(Vec<(Uuid, i64)>),
}

/// An event's Redis state at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Redis server time of the read.
    pub at_ms: i64,
    pub loaded: bool,
    pub stock_left: Option<i64>,
    pub bought: std::collections::HashMap<i64, i64>,
    pub ledger: Vec<(Uuid, LedgerEntry)>,
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

/// What `idempotency.lua` found for a key (see its header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// No record before this call: go ahead with the candidate order_no.
    New(Uuid),
    /// An attempt with this order_no ended without an answer: resume it.
    Resume(Uuid),
    /// Answered before: replay.
    Done {
        status: u16,
        body: String,
    },
    InProgress,
    /// The key was used for another request.
    Mismatch,
}

impl KeyClaim {
    fn decode(reply: Value) -> Result<Self, RedisError> {
        let bad =
            |reply: &Value| RedisError::Protocol(format!("idempotency.lua returned {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad(&reply));
        };
        let text = |i: usize| items.get(i).and_then(Value::as_string);
        let uuid = |i: usize| text(i).and_then(|s| s.parse::<Uuid>().ok());
        Ok(match items.first().and_then(Value::as_i64) {
            Some(1) => Self::New(uuid(1).ok_or_else(|| bad(&reply))?),
            Some(2) => Self::Resume(uuid(1).ok_or_else(|| bad(&reply))?),
            Some(3) => Self::Done {
                status: text(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&reply))?,
                body: text(2).ok_or_else(|| bad(&reply))?,
            },
            Some(4) => Self::InProgress,
            Some(5) => Self::Mismatch,
            _ => return Err(bad(&reply)),
        })
    }
}

/// The state an Idempotency-Key record is written in.
#[derive(Clone, Copy, Debug)]
pub enum KeyState<'a> {
    InFlight,
    /// Ended without an answer: the next retry resumes it.
    Retry,
    /// Answered: replay `status` and `body`.
    Done {
        status: u16,
        body: &'a str,
    },
}

/// Failed order_nos a shopper's list keeps per event (the newest): a
/// shopper who cannot pay cannot grow Redis, or the scripts' work, without
/// bound. `release.lua` prunes to it, and a rebuild (`preheat.lua`) loads no
/// more than it.
pub const FAILED_KEPT_PER_SHOPPER: usize = 8;

/// The engine's Redis handle: cheap to clone.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    config: Config,
    keys: Keys,
    scripts: Arc<Scripts>,
}

impl Redis {
    /// Connects (retrying for `connect_for`), then loads every script.
    pub async fn connect(
        url: &str,
        prefix: &str,
        pool_size: usize,
        command_timeout: Duration,
        connect_for: Duration,
    ) -> Result<Self, RedisError> {
        let config = Config::from_url(url)?;
        let build = || {
            Builder::from_config(config.clone())
                .with_performance_config(|perf| perf.default_command_timeout = command_timeout)
                .with_connection_config(|conn| {
                    conn.connection_timeout = Duration::from_secs(2);
                    conn.internal_command_timeout = Duration::from_secs(2);
                    conn.max_command_attempts = 3;
                    conn.tcp = fred::types::config::TcpConfig {
                        nodelay: Some(true),
                        ..Default::default()
                    };
                })
                .set_policy(reconnect_policy())
                .build_pool(pool_size)
        };
        let deadline = tokio::time::Instant::now() + connect_for;
        // The first connection is retried too (Redis may still be starting),
        // each time with a fresh pool: one whose first connect failed stays down.
        let pool = loop {
            let pool = build()?;
            match pool.init().await {
                Ok(_) => break pool,
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err.into()),
                Err(_) => {
                    let _ = pool.quit().await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let redis = Self {
            pool,
            config,
            keys: Keys::new(prefix),
            scripts: Arc::new(Scripts::default()),
        };
        loop {
            match redis.load_scripts().await {
                Ok(()) => return Ok(redis),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A fresh subscriber connection on the same server(s), for pub/sub.
    pub fn subscriber(&self) -> Result<SubscriberClient, RedisError> {
        Ok(Builder::from_config(self.config.clone())
            .set_policy(reconnect_policy())
            .build_subscriber_client()?)
    }

    /// `SCRIPT LOAD` every script (on every primary in cluster mode).
    pub async fn load_scripts(&self) -> Result<(), RedisError> {
        for script in self.scripts.all() {
            let _: () = self.pool.next().script_load_cluster(script.body).await?;
        }
        Ok(())
    }

    /// EVALSHA; when Redis no longer knows the script (restart, SCRIPT FLUSH,
    /// failover), EVAL with its body, which runs it and caches it again in one
    /// step: no window in which another flush can make the retry fail too.
    async fn run(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, RedisError> {
        let client = self.pool.next();
        match client
            .evalsha::<Value, _, _, _>(&script.sha1, keys.clone(), args.clone())
            .await
        {
            Err(err) if err.details().starts_with("NOSCRIPT") => {
                tracing::warn!(script = script.name, "script cache flushed; reloading");
                Ok(client.eval(script.body, keys, args).await?)
            }
            result => Ok(result?),
        }
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let _: String = self.pool.next().ping(None).await?;
        Ok(())
    }

    /// Runs `purchase.lua`: the whole purchase decision, one atomic step.
    pub async fn purchase(
        &self,
        event_id: i64,
        user_id: i64,
        quantity: i32,
        order_no: Uuid,
    ) -> Result<PurchaseOutcome, RedisError> {
        let reply = self
            .run(
                &self.scripts.purchase,
                self.keys.event(event_id).all(),
                vec![
                    Value::from(user_id),
                    Value::from(quantity as i64),
                    Value::from(order_no.to_string()),
                ],
            )
            .await?;
        PurchaseOutcome::decode(reply)
    }

    /// Runs `release.lua` in restock mode: the stock of failed orders back on
    /// sale, once; returns units returned.
    pub async fn release(&self, event_id: i64, order_nos: &[Uuid]) -> Result<i64, RedisError> {
        self.settle_failed(event_id, order_nos, true).await
    }

    /// Runs `release.lua` in discard mode: failed orders whose units never
    /// existed leave the ledger without going back on sale.
    pub async fn discard(&self, event_id: i64, order_nos: &[Uuid]) -> Result<i64, RedisError> {
        self.settle_failed(event_id, order_nos, false).await
    }

    async fn settle_failed(
        &self,
        event_id: i64,
        order_nos: &[Uuid],
        restock: bool,
    ) -> Result<i64, RedisError> {
        if order_nos.is_empty() {
            return Ok(0);
        }
        let mut args = Vec::with_capacity(order_nos.len() + 2);
        args.push(Value::from(FAILED_KEPT_PER_SHOPPER as i64));
        args.push(Value::from(if restock { "restock" } else { "discard" }));
        args.extend(order_nos.iter().map(|o| Value::from(o.to_string())));
        let reply = self
            .run(
                &self.scripts.release,
                self.keys.event(event_id).for_release(),
                args,
            )
            .await?;
        reply
            .as_i64()
            .ok_or_else(|| RedisError::Protocol(format!("release.lua returned {reply:?}")))
    }

    /// Runs `cap.lua`: the event's stock lowered to at most `unsold`.
    pub async fn cap_stock(&self, event_id: i64, unsold: i64) -> Result<i64, RedisError> {
        let reply = self
            .run(
                &self.scripts.cap,
                vec![self.keys.event(event_id).stock],
                vec![Value::from(unsold.max(0))],
            )
            .await?;
        reply
            .as_i64()
            .ok_or_else(|| RedisError::Protocol(format!("cap.lua returned {reply:?}")))
    }

    /// Acks persisted intents: they leave the ledger.
    pub async fn ack(&self, event_id: i64, order_nos: &[Uuid]) -> Result<(), RedisError> {
        if order_nos.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = order_nos.iter().map(Uuid::to_string).collect();
        let _: i64 = self
            .pool
            .next()
            .hdel(self.keys.event(event_id).ledger, fields)
            .await?;
        Ok(())
    }

    /// Loads an event that Redis does not hold yet; false when it already did.
    pub async fn preheat(&self, event_id: i64, sale: SaleParams) -> Result<bool, RedisError> {
        let reply = self
            .run(
                &self.scripts.preheat,
                self.keys.event(event_id).all(),
                sale_args("init", sale),
            )
            .await?;
        self.add_live_event(event_id).await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Replaces an event's Redis state by Postgres truth (`orders`, oldest
    /// first) plus the pending intents Redis still holds. Returns
    /// (stock_left, intents kept).
    pub async fn rebuild(
        &self,
        event_id: i64,
        sale: SaleParams,
        orders: &[PersistedOrder],
    ) -> Result<(i64, i64), RedisError> {
        let mut args = sale_args("rebuild", sale);
        args.reserve(orders.len() * 4);
        for order in orders {
            args.push(Value::from(order.order_no.to_string()));
            args.push(Value::from(order.user_id));
            args.push(Value::from(order.quantity as i64));
            args.push(Value::from(if order.failed { "1" } else { "0" }));
        }
        let reply = self
            .run(&self.scripts.preheat, self.keys.event(event_id).all(), args)
            .await?;
        self.add_live_event(event_id).await?;
        match reply {
            Value::Array(items) if items.len() == 2 => match (items[0].as_i64(), items[1].as_i64())
            {
                (Some(left), Some(kept)) => Ok((left, kept)),
                _ => Err(RedisError::Protocol(format!(
                    "preheat.lua rebuild returned {items:?}"
                ))),
            },
            other => Err(RedisError::Protocol(format!(
                "preheat.lua rebuild returned {other:?}"
            ))),
        }
    }

    /// One atomic read of an event's sale state (see `snapshot.lua`).
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

    /// Runs `repair.lua`; true when the state was still as observed and got corrected.
    pub async fn repair(
        &self,
        event_id: i64,
        observed: &Snapshot,
        stock_left: i64,
        buyers: &[(i64, i64, i64)],
    ) -> Result<bool, RedisError> {
        let k = self.keys.event(event_id);
        let mut args = vec![
            Value::from(observed.stock_left.unwrap_or(-1)),
            Value::from(stock_left),
            Value::from(observed.ledger.len() as i64),
        ];
        for (user, before, after) in buyers {
            args.extend([
                Value::from(*user),
                Value::from(*before),
                Value::from(*after),
            ]);
        }
        let reply = self
            .run(
                &self.scripts.repair,
                vec![k.stock, k.bought, k.ledger],
                args,
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Runs `admit.lua` for intents of one event: which may be persisted as
    /// they are, and which lost their stock with a Redis restart.
    pub async fn admit(
        &self,
        event_id: i64,
        intents: &[crate::writer::Intent],
    ) -> Result<Admission, RedisError> {
        let mut args = Vec::with_capacity(intents.len() * 5);
        for i in intents {
            args.extend([
                Value::from(i.order_no.to_string()),
                Value::from(i.user_id),
                Value::from(i.quantity as i64),
                Value::from(i.amount),
                Value::from(i.accepted_at.timestamp_millis()),
            ]);
        }
        match self
            .run(&self.scripts.admit, self.keys.event(event_id).all(), args)
            .await?
        {
            Value::Integer(-1) => Ok(Admission::NotLoaded),
            Value::Array(states) if states.len() == intents.len() => Ok(Admission::Decided(
                intents
                    .iter()
                    .zip(states)
                    .map(|(i, s)| (i.order_no, s.as_i64().unwrap_or(1)))
                    .collect(),
            )),
            other => Err(RedisError::Protocol(format!(
                "admit.lua returned {other:?}"
            ))),
        }
    }

    /// Runs `missing.lua`: the intents (of one event) no longer pending in its ledger.
    pub async fn missing_from_ledger(
        &self,
        event_id: i64,
        intents: &[crate::writer::Intent],
    ) -> Result<Vec<crate::writer::Intent>, RedisError> {
        let args: Vec<Value> = intents
            .iter()
            .map(|i| Value::from(i.order_no.to_string()))
            .collect();
        let reply = self
            .run(
                &self.scripts.missing,
                vec![self.keys.event(event_id).ledger],
                args,
            )
            .await?;
        let Value::Array(positions) = reply else {
            return Err(RedisError::Protocol(format!(
                "missing.lua returned {reply:?}"
            )));
        };
        Ok(positions
            .iter()
            .filter_map(|p| p.as_i64())
            .filter_map(|p| intents.get((p - 1) as usize).copied())
            .collect())
    }

    /// Units left, or None when the event is not in Redis.
    pub async fn stock_left(&self, event_id: i64) -> Result<Option<i64>, RedisError> {
        Ok(self
            .pool
            .next()
            .get(self.keys.event(event_id).stock)
            .await?)
    }

    /// Whether the event's sale parameters are loaded.
    pub async fn is_loaded(&self, event_id: i64) -> Result<bool, RedisError> {
        let n: i64 = self
            .pool
            .next()
            .exists(self.keys.event(event_id).meta)
            .await?;
        Ok(n == 1)
    }

    /// Every pending intent of an event.
    pub async fn ledger(&self, event_id: i64) -> Result<Vec<(Uuid, LedgerEntry)>, RedisError> {
        let raw: Vec<(String, String)> = self
            .pool
            .next()
            .hgetall::<std::collections::HashMap<String, String>, _>(
                self.keys.event(event_id).ledger,
            )
            .await?
            .into_iter()
            .collect();
        Ok(raw
            .into_iter()
            .filter_map(|(order_no, entry)| {
                Some((order_no.parse().ok()?, LedgerEntry::parse(&entry)?))
            })
            .collect())
    }

    /// One pending intent, if still in the ledger.
    pub async fn ledger_entry(
        &self,
        event_id: i64,
        order_no: Uuid,
    ) -> Result<Option<LedgerEntry>, RedisError> {
        let raw: Option<String> = self
            .pool
            .next()
            .hget(self.keys.event(event_id).ledger, order_no.to_string())
            .await?;
        Ok(raw.as_deref().and_then(LedgerEntry::parse))
    }

    /// Pending intents for several order_nos of one event.
    pub async fn ledger_entries(
        &self,
        event_id: i64,
        order_nos: &[Uuid],
    ) -> Result<Vec<(Uuid, LedgerEntry)>, RedisError> {
        if order_nos.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = order_nos.iter().map(Uuid::to_string).collect();
        let raw: Vec<Option<String>> = self
            .pool
            .next()
            .hmget(self.keys.event(event_id).ledger, fields)
            .await?;
        Ok(order_nos
            .iter()
            .zip(raw)
            .filter_map(|(o, r)| Some((*o, LedgerEntry::parse(r.as_deref()?)?)))
            .collect())
    }

    /// The buyer's order_nos for an event (failed ones marked `!`).
    pub async fn buyer_orders(
        &self,
        event_id: i64,
        user_id: i64,
    ) -> Result<Vec<(Uuid, bool)>, RedisError> {
        let raw: Option<String> = self
            .pool
            .next()
            .hget(self.keys.event(event_id).orders, user_id)
            .await?;
        Ok(parse_order_list(raw.as_deref().unwrap_or("")))
    }

    /// Units held per buyer (user_id -> units), as Redis counts them.
    pub async fn buyers(
        &self,
        event_id: i64,
    ) -> Result<std::collections::HashMap<i64, i64>, RedisError> {
        let raw: std::collections::HashMap<String, i64> = self
            .pool
            .next()
            .hgetall(self.keys.event(event_id).bought)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(u, q)| Some((u.parse().ok()?, q)))
            .collect())
    }

    /// Removes an ended event's keys and its place in the live set.
    pub async fn close_out(&self, event_id: i64) -> Result<(), RedisError> {
        let _: i64 = self
            .pool
            .next()
            .del(self.keys.event(event_id).all())
            .await?;
        let _: i64 = self
            .pool
            .next()
            .srem(self.keys.live_events(), event_id)
            .await?;
        Ok(())
    }

    pub async fn add_live_event(&self, event_id: i64) -> Result<(), RedisError> {
        let _: i64 = self
            .pool
            .next()
            .sadd(self.keys.live_events(), event_id)
            .await?;
        Ok(())
    }

    /// Event ids currently loaded into Redis.
    pub async fn live_events(&self) -> Result<Vec<i64>, RedisError> {
        let ids: Vec<i64> = self.pool.next().smembers(self.keys.live_events()).await?;
        Ok(ids)
    }

    /// Tells every engine process that an event has stock again.
    pub async fn publish_stock_back(&self, event_id: i64) -> Result<(), RedisError> {
        let _: i64 = self
            .pool
            .next()
            .publish(self.keys.stock_back_channel(), event_id)
            .await?;
        Ok(())
    }

    /// Claims a shopper's Idempotency-Key record (`idempotency.lua` claim).
    pub async fn claim_key(
        &self,
        user_id: i64,
        key: &str,
        fingerprint: &str,
        candidate: Uuid,
        ttl_ms: i64,
        stale_ms: i64,
    ) -> Result<KeyClaim, RedisError> {
        let reply = self
            .run(
                &self.scripts.idempotency,
                vec![self.keys.idempotency(user_id, key)],
                vec![
                    Value::from("claim"),
                    Value::from(fingerprint),
                    Value::from(candidate.to_string()),
                    Value::from(ttl_ms.max(1)),
                    Value::from(stale_ms),
                ],
            )
            .await?;
        KeyClaim::decode(reply)
    }

    /// Overwrites a shopper's Idempotency-Key record (`idempotency.lua` put).
    pub async fn put_key(
        &self,
        user_id: i64,
        key: &str,
        fingerprint: &str,
        order_no: Uuid,
        ttl_ms: i64,
        state: KeyState<'_>,
    ) -> Result<(), RedisError> {
        let mut args = vec![
            Value::from("put"),
            Value::from(fingerprint),
            Value::from(order_no.to_string()),
            Value::from(ttl_ms.max(1)),
        ];
        match state {
            KeyState::InFlight => args.push(Value::from("in_flight")),
            KeyState::Retry => args.push(Value::from("retry")),
            KeyState::Done { status, body } => args.extend([
                Value::from("done"),
                Value::from(status as i64),
                Value::from(body),
            ]),
        }
        self.run(
            &self.scripts.idempotency,
            vec![self.keys.idempotency(user_id, key)],
            args,
        )
        .await?;
        Ok(())
    }

    /// The pool's next client, for the few plain commands other modules own
    /// (idempotency records, the reconciler lock).
    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Runs one of the lock scripts.
    pub async fn run_lock_script(
        &self,
        script: &LuaScript,
        key: String,
        args: Vec<Value>,
    ) -> Result<i64, RedisError> {
        let reply = self.run(script, vec![key], args).await?;
        reply
            .as_i64()
            .ok_or_else(|| RedisError::Protocol(format!("{} returned {reply:?}", script.name)))
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}

/// Reconnect forever, backing off from 50 ms to at most 500 ms, so a Redis that
/// comes back is used again within half a second.
fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 50, 500, 2)
}

fn sale_args(mode: &str, sale: SaleParams) -> Vec<Value> {
    vec![
        Value::from(mode),
        Value::from(sale.price),
        Value::from(sale.per_user_limit as i64),
        Value::from(sale.starts_ms),
        Value::from(sale.ends_ms),
        Value::from(sale.stock_total),
        Value::from(FAILED_KEPT_PER_SHOPPER as i64),
    ]
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
    fn ledger_entry_round_trip_and_rejects_garbage() {
        assert_eq!(
            LedgerEntry::parse("7:2:300:1700000000000"),
            Some(LedgerEntry {
                user_id: 7,
                quantity: 2,
                amount: 300,
                accepted_ms: 1_700_000_000_000
            })
        );
        assert_eq!(LedgerEntry::parse("7:2:300"), None);
        assert_eq!(LedgerEntry::parse("7:2:300:1:9"), None);
    }

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
