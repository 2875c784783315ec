//! Writer drain rate: orders persisted per second, each with its versioned
//! wallet debit, payment row and sold-counter bump, fsync on, through the real
//! writer path (admission against Redis, one transaction per batch, ack in
//! Redis afterwards). Compared in the same run with a one-transaction-per-
//! order baseline (the same path with batches of one, one writer).
//!
//! Needs Redis and Postgres (`make services`); makes its own database,
//! `seckill_bench_drain_<pid>`, and drops it at the end.

use std::time::{Duration, Instant};

use chrono::Utc;
use seckill::{
    intent::Intent,
    redis::{PurchaseOutcome, Redis, SaleParams},
    writer,
};
use sqlx::PgPool;
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;

const ORDERS: i64 = 60_000;
const BASELINE_ORDERS: i64 = 2_000;
/// Batch size and writer count of the batched run (`DRAIN_BATCH`, `DRAIN_WRITERS` override).
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fresh_db() -> PgPool {
    common::fresh_db("drain", 12).await
}

/// A preheated event with `orders` intents accepted by purchase.lua, ready to drain.
async fn accepted_intents(db: &PgPool, redis: &Redis, orders: i64, first_user: i64) -> Vec<Intent> {
    let now = Utc::now();
    let event = seckill::db::events::insert(
        db,
        &seckill::db::events::NewEvent {
            name: "drain",
            price: 100,
            stock_total: orders,
            per_user_limit: 1,
            starts_at: now - chrono::Duration::seconds(1),
            ends_at: now + chrono::Duration::hours(1),
            stock_buckets: 1,
        },
    )
    .await
    .unwrap();
    let sale = SaleParams {
        price: 100,
        per_user_limit: 1,
        starts_ms: event.starts_at.timestamp_millis(),
        ends_ms: event.ends_at.timestamp_millis(),
        stock_total: orders,
        paused: false,
    };
    redis.preheat(event.id, sale).await.unwrap();
    seckill::db::wallets::seed(db, first_user, orders, 1_000_000)
        .await
        .unwrap();
    let mut intents = Vec::with_capacity(orders as usize);
    for chunk in (first_user..first_user + orders)
        .collect::<Vec<_>>()
        .chunks(1_000)
    {
        let calls = chunk.iter().map(|&user| {
            let redis = redis.clone();
            async move {
                let order_no = Uuid::now_v7();
                match redis.purchase(event.id, user, 1, order_no).await.unwrap() {
                    PurchaseOutcome::Accepted {
                        amount,
                        accepted_ms,
                        ..
                    } => Intent {
                        buckets: 1,
                        order_no,
                        event_id: event.id,
                        user_id: user,
                        quantity: 1,
                        amount,
                        accepted_at: chrono::DateTime::from_timestamp_millis(accepted_ms).unwrap(),
                    },
                    other => panic!("setup purchase refused: {other:?}"),
                }
            }
        });
        intents.extend(futures::future::join_all(calls).await);
    }
    intents
}

/// Drains `intents` with `workers` concurrent writers taking batches of `batch`.
async fn drain(
    db: &PgPool,
    redis: &Redis,
    intents: Vec<Intent>,
    workers: usize,
    batch: usize,
) -> f64 {
    let (tx, rx) = async_channel::unbounded();
    for chunk in intents.chunks(batch) {
        tx.send(chunk.to_vec()).await.unwrap();
    }
    tx.close();
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (rx, db, redis) = (rx.clone(), db.clone(), redis.clone());
            tokio::spawn(async move {
                while let Ok(batch) = rx.recv().await {
                    if std::env::var("DRAIN_PG_ONLY").is_ok() {
                        // Diagnostic: the Postgres transaction alone, no Redis admission or ack.
                        writer::persist::persist_batch(&db, &batch, None)
                            .await
                            .unwrap();
                    } else {
                        assert_eq!(
                            writer::persist_with_retry(&db, &redis, &batch, w)
                                .await
                                .len(),
                            batch.len()
                        );
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = intents.len() as f64;
    n / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let met = rt.block_on(async {
        let db = fresh_db().await;
        let prefix = format!("drain{}", &Uuid::new_v4().simple().to_string()[..8]);
        let redis_url = std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = Redis::connect(&redis_url, &prefix, 4, Duration::from_secs(5), Duration::from_secs(5)).await.unwrap();
        let (fsync,): (String,) = sqlx::query_as("SHOW fsync").fetch_one(&db).await.unwrap();
        let (sync_commit,): (String,) = sqlx::query_as("SHOW synchronous_commit").fetch_one(&db).await.unwrap();

        let baseline_intents = accepted_intents(&db, &redis, BASELINE_ORDERS, 1).await;
        let baseline = drain(&db, &redis, baseline_intents, 1, 1).await;
        let (batch, writers) = (knob("DRAIN_BATCH", 512), knob("DRAIN_WRITERS", 4));
        // Several batched drains, each of fresh intents on a fresh event: the
        // target is judged on their median (this machine's noise moves one run).
        let runs = knob("DRAIN_RUNS", 3).max(1);
        let mut rates = Vec::with_capacity(runs);
        for run in 0..runs {
            let first_user = 10_000_000 * (run as i64 + 1);
            let intents = accepted_intents(&db, &redis, ORDERS, first_user).await;
            rates.push(drain(&db, &redis, intents, writers, batch).await);
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        // The median as scripts/bench-spread.jq takes it: the middle run, or
        // the mean of the two middle runs when their number is even.
        let batched = (sorted[(runs - 1) / 2] + sorted[runs / 2]) / 2.0;

        let (persisted,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders o JOIN payments p USING (order_no) JOIN wallet_debits d USING (order_no) JOIN wallet_ledger l ON l.order_no = o.order_no AND l.kind = 'purchase' WHERE o.status = 'confirmed'").fetch_one(&db).await.unwrap();
        let expected = ORDERS * runs as i64 + BASELINE_ORDERS;
        assert_eq!(persisted, expected, "every order persisted with its payment, debit and ledger row");
        let (outbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox_events WHERE kind = 'order.confirmed'").fetch_one(&db).await.unwrap();
        assert_eq!(outbox, expected, "every order with its outbox row");

        println!("writer drain (fsync={fsync}, synchronous_commit={sync_commit}; each order with versioned wallet debit, payment, wallet-ledger row, outbox row, sold bump; admission + ack in Redis)");
        println!("  one transaction per order (1 writer, batch 1)   {baseline:>9.0} orders/s  ({BASELINE_ORDERS} orders)");
        let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!("  batched ({writers} writers, batch {batch}), {runs} runs   min {:.0} / median {batched:.0} / max {:.0} orders/s  ({ORDERS} orders each: {})", sorted[0], sorted[runs - 1], each.join(", "));
        println!("  speed-up (median)                                {:>9.1}x", batched / baseline);
        println!("  SPEC §7 drain ≥ 30000 orders/s (median of {runs}): {}", if batched >= 30_000.0 { "MET" } else { "NOT MET" });
        println!("DRAIN_JSON {{\"baseline_orders_per_s\": {baseline:.0}, \"batched_orders_per_s\": {batched:.0}, \"batched_runs\": [{}], \"batch\": {batch}, \"writers\": {writers}, \"fsync\": \"{fsync}\", \"synchronous_commit\": \"{sync_commit}\"}}", each.join(", "));

        common::forget_redis_keys(&redis_url, &prefix).await;
        db.close().await;
        common::drop_db("drain").await;
        batched >= 30_000.0
    });
    // 3: it ran and the target was not met (scripts/bench.sh names it).
    if !met {
        std::process::exit(3);
    }
}
