//! Redis: the live sale state of every preheated event.
//!
//! [`Redis`] is a small handle: a fred connection pool (single node or Redis
//! Cluster), the key builder, and the loaded scripts run with EVALSHA. Each
//! `lua/` script has one typed wrapper in a file of its own, which owns the
//! script's KEYS order, its arguments and the decoding of its reply:
//!
//! - [`purchase`]: `purchase.lua`, the whole purchase decision.
//! - [`settle`]: `ack.lua` and `release.lua` (failed orders, restocked or discarded).
//! - [`refund`]: `refund.lua`, refunded orders' units back to the sale once.
//! - [`preheat`]: `preheat.lua`, loading a sale.
//! - [`rebuild`]: `rebuild.lua`, a sale rebuilt from Postgres in bounded steps.
//! - [`admit`]: `missing.lua` and `admit.lua`, a writer's check of its batch.
//! - [`state`]: `state.lua` (an event's counters in O(1)), `buyers.lua` (a
//!   batch of shoppers at one instant), and paged walks of the ledger and
//!   the buyers: bounded steps whatever the size of the sale.
//! - [`repair`]: `repair.lua` and `cap.lua`, corrections of drifted state.
//! - [`lifecycle`]: `sale.lua` (an operator's end, pause or edit of a live
//!   sale) and `adjust.lua` (a stock adjustment, applied once).
//! - [`transfer`]: `transfer.lua`, stock moving between two buckets of an
//!   event (out on the source, in on the target, done), each step once.
//! - [`idempotency`]: `idempotency.lua`, Idempotency-Key records.
//! - [`lock`]: `renew.lua` and `unlock.lua`, the leader lock.
//! - [`live`]: plain reads of an event's state and the set of live events.
//! - [`pubsub`]: "stock came back" between engine processes.
//!
//! [`keys`] is the only place key strings are built; [`scripts`] holds the
//! script texts. No other module sends raw commands.

pub mod admit;
pub mod idempotency;
pub mod keys;
pub mod lifecycle;
pub mod live;
pub mod lock;
pub mod preheat;
pub mod pubsub;
pub mod purchase;
pub mod rebuild;
pub mod refund;
pub mod repair;
pub mod scripts;
pub mod settle;
pub mod state;
pub mod transfer;

use std::{sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::{config::ReconnectPolicy, Value},
};

pub use crate::bucket::Buckets;
pub use admit::Admission;
pub use idempotency::{KeyClaim, KeyState};
pub use keys::{Bucket, EventKeys, Keys, MAX_BUCKETS};
pub use lifecycle::{AdjustOutcome, LoadedParams, SaleWrite};
pub use live::parse_order_list;
pub use lock::LeaderLock;
pub use preheat::SaleParams;
pub use purchase::PurchaseOutcome;
pub use rebuild::{PersistedOrder, RebuiltBuyer};
pub use refund::{RefundedOrder, StockReturn};
pub use scripts::{LuaScript, Scripts};
pub use settle::FAILED_KEPT_PER_SHOPPER;
pub use state::{BuyerState, SaleState};
pub use transfer::PendingTransfer;

/// Most items (order_nos, intents, shoppers) one script call takes. Redis
/// runs one command at a time, so a call over a whole writer batch (up to a
/// thousand intents) would hold every purchase behind it for milliseconds;
/// batches go in parts instead ([`Redis::in_parts`]). An item is one to
/// three lookups in the event's hashes: under a µs each on a small sale,
/// about 2-3 µs each on a sale of a million buyers on the 2-vCPU reference
/// VM (the hashes no longer fit the caches), so a part of 16 stays several
/// times under the 1 ms bound there (measured in `make bench`, part bigsale).
pub const MOST_PER_CALL: usize = 16;

/// A Redis failure; every variant answers 503 at the HTTP edge.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] fred::error::Error),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

/// The engine's Redis handle: cheap to clone.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    config: Config,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// Purchases waiting for their bucket's next `purchase.lua` call.
    lanes: Arc<purchase::Lanes>,
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
            lanes: Arc::default(),
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

    /// `SCRIPT LOAD` every script (on every primary in cluster mode).
    async fn load_scripts(&self) -> Result<(), RedisError> {
        for script in self.scripts.all() {
            let _: () = self.pool.next().script_load_cluster(script.body()).await?;
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
            .evalsha::<Value, _, _, _>(script.sha1(), keys.clone(), args.clone())
            .await
        {
            Err(err) if err.details().starts_with("NOSCRIPT") => {
                tracing::warn!(script = script.name(), "script cache flushed; reloading");
                Ok(client.eval(script.body(), keys, args).await?)
            }
            result => Ok(result?),
        }
    }

    /// Runs `call` on `items` in parts of at most [`MOST_PER_CALL`], all
    /// sent at once (pipelined on the pool): other clients' commands run
    /// between the parts.
    async fn in_parts<'a, T, R, F, Fut>(items: &'a [T], call: F) -> Result<Vec<R>, RedisError>
    where
        F: Fn(&'a [T]) -> Fut,
        Fut: std::future::Future<Output = Result<R, RedisError>>,
    {
        futures_util::future::try_join_all(items.chunks(MOST_PER_CALL).map(call)).await
    }

    /// Runs a script whose reply is one integer.
    async fn run_for_int(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<i64, RedisError> {
        let reply = self.run(script, keys, args).await?;
        reply
            .as_i64()
            .ok_or_else(|| RedisError::Protocol(format!("{} returned {reply:?}", script.name())))
    }

    /// The pool's next client, for the plain commands of this module's files.
    fn client(&self) -> &Client {
        self.pool.next()
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let _: String = self.client().ping(None).await?;
        Ok(())
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
