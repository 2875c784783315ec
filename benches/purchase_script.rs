//! Criterion micro-benchmarks against real Redis and Postgres:
//! - the purchase script round trip (EVALSHA purchase.lua),
//! - the purchase handler's own CPU cost in-process (sold-out path, no I/O),
//! - one writer batch persisted at sizes 1 / 16 / 64 / 256 (orders, versioned
//!   wallet debits, payments, sold counter; fsync on),
//! - a keyed rate-limiter check.
//!
//! Needs Redis and Postgres (`make services`); uses database `seckill_bench`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use axum::body::Body;
use chrono::Utc;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

#[path = "common/mod.rs"]
mod common;
use seckill::{
    auth::Auth,
    config::{RateSettings, Settings},
    ratelimit::RateLimits,
    redis::{PurchaseOutcome, Redis, SaleParams},
    startup::Application,
    {intent::Intent, writer::persist::persist_batch},
};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

const ADMIN: &str = "bench-admin-token-0123456789";
const SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn redis_url() -> String {
    std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh, migrated bench database of this process.
async fn fresh_db() -> PgPool {
    common::fresh_db("script", 8).await
}

fn purchase_script(c: &mut Criterion) {
    let rt = runtime();
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let redis = rt
        .block_on(Redis::connect(
            &redis_url(),
            &prefix,
            4,
            Duration::from_secs(2),
            Duration::from_secs(5),
        ))
        .unwrap();
    let now = Utc::now().timestamp_millis();
    let sale = SaleParams {
        price: 100,
        per_user_limit: 1,
        starts_ms: now - 1_000,
        ends_ms: now + 3_600_000,
        stock_total: 1_000_000_000,
        paused: false,
    };
    rt.block_on(redis.preheat(1, sale)).unwrap();
    let user = AtomicI64::new(1);
    let mut group = c.benchmark_group("redis");
    group.throughput(Throughput::Elements(1));
    group.bench_function("purchase_script_round_trip", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = redis
                .purchase(1, user.fetch_add(1, Ordering::Relaxed), 1, Uuid::now_v7())
                .await
                .unwrap();
            assert!(matches!(outcome, PurchaseOutcome::Accepted { .. }));
        })
    });
    group.finish();
    rt.block_on(common::forget_redis_keys(&redis_url(), &prefix));
}

fn handler_cpu(c: &mut Criterion) {
    let rt = runtime();
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let env: HashMap<&str, String> = HashMap::from([
        ("SECKILL_BIND", "127.0.0.1:0".to_string()),
        ("SECKILL_ADMIN_TOKEN", ADMIN.into()),
        ("SECKILL_JWT_SECRET", SECRET.into()),
        ("SECKILL_DATABASE_URL", common::database_url("script")),
        ("SECKILL_REDIS_URL", redis_url()),
        ("SECKILL_REDIS_PREFIX", prefix),
        ("SECKILL_RATE_GLOBAL_RPS", "0".into()),
        ("SECKILL_RATE_USER_RPS", "0".into()),
        ("SECKILL_RATE_IP_RPS", "0".into()),
    ]);
    // The application stays alive for the bench: its pool's connections
    // were opened on its background runtime, which dropping it shuts down.
    let (_app, router, token, event_id) = rt.block_on(async {
        fresh_db().await;
        let settings = Settings::from_lookup(|k| env.get(k).cloned()).unwrap();
        let app = Application::build(settings).await.unwrap();
        let state = app.state();
        // A sold-out sale: after the first refusal the local flag answers.
        let now = Utc::now();
        let event = seckill::db::events::insert(
            &state.db,
            &seckill::db::events::NewEvent {
                name: "bench",
                price: 1,
                stock_total: 0,
                per_user_limit: 1,
                starts_at: now,
                ends_at: now + chrono::Duration::hours(1),
                stock_buckets: 1,
            },
        )
        .await
        .unwrap();
        // Written straight to Postgres: announced as the admin route would
        // (the catalog answers ids above the highest it knows 404).
        state.catalog.created(event.id);
        state
            .redis
            .preheat(event.id, seckill::loading::sale_params(&event))
            .await
            .unwrap();
        let router = seckill::http::router(state.clone());
        let token = Auth::new(SECRET.as_bytes(), ADMIN).issue(7, 3600);
        (app, router, token, event.id)
    });
    let request = || {
        axum::http::Request::post(format!("/api/events/{event_id}/purchase"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"quantity":1}"#))
            .unwrap()
    };
    let first = rt.block_on(router.clone().oneshot(request())).unwrap();
    assert_eq!(first.status(), 409);
    let mut group = c.benchmark_group("handler");
    group.throughput(Throughput::Elements(1));
    group.bench_function("purchase_sold_out_in_process", |b| {
        b.to_async(&rt).iter(|| async {
            let response = router.clone().oneshot(request()).await.unwrap();
            assert_eq!(response.status(), 409);
        })
    });
    group.finish();
}

fn persist(c: &mut Criterion) {
    let rt = runtime();
    let (pool, event_id) = rt.block_on(async {
        let pool = fresh_db().await;
        let now = Utc::now();
        let event = seckill::db::events::insert(
            &pool,
            &seckill::db::events::NewEvent {
                name: "bench",
                price: 100,
                stock_total: 1_000_000_000,
                per_user_limit: 1,
                starts_at: now,
                ends_at: now + chrono::Duration::hours(1),
                stock_buckets: 1,
            },
        )
        .await
        .unwrap();
        seckill::db::wallets::seed(&pool, 1, 100_000, 1_000_000_000_000)
            .await
            .unwrap();
        (pool, event.id)
    });
    let next_user = AtomicI64::new(0);
    let mut group = c.benchmark_group("writer");
    group.sample_size(20);
    for size in [1usize, 16, 64, 256] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(
            BenchmarkId::new("persist_batch", size),
            &size,
            |b, &size| {
                b.to_async(&rt).iter(|| async {
                    let batch: Vec<Intent> = (0..size)
                        .map(|_| Intent {
                            buckets: 1,
                            order_no: Uuid::now_v7(),
                            event_id,
                            user_id: next_user.fetch_add(1, Ordering::Relaxed) % 100_000 + 1,
                            quantity: 1,
                            amount: 100,
                            accepted_at: Utc::now(),
                        })
                        .collect();
                    let result = persist_batch(&pool, &batch, None).await.unwrap();
                    assert_eq!(result.confirmed.len(), size);
                })
            },
        );
    }
    group.finish();
}

fn rate_limiter(c: &mut Criterion) {
    let limits = RateLimits::new(RateSettings {
        global_rps: 0,
        user_rps: 5,
        user_burst: 10,
        ip_rps: 0,
        ip_burst: 0,
    });
    let mut user = 0i64;
    let mut group = c.benchmark_group("ratelimit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("keyed_check_1M_users", |b| {
        b.iter(|| {
            user = (user + 1) % 1_000_000;
            let _ = limits.check_user(user);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = purchase_script, handler_cpu, persist, rate_limiter
}
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    runtime().block_on(common::drop_db("script"));
}
