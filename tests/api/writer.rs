//! The writers: optimistic-lock conflicts and graceful shutdown.

use chrono::Utc;
use reqwest::StatusCode;
use seckill::{intent::Intent, writer::persist::persist_batch};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{all, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_moved_underneath_is_a_counted_conflict_then_both_debits_apply() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 5).await;
    app.fund(1, 1, 1_000).await;
    sqlx::query("INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, created_at) VALUES ($1, $2, 1, 1, 0, 'confirmed', now())")
        .bind(Uuid::now_v7())
        .bind(sale.id)
        .execute(&app.db)
        .await
        .unwrap();

    // Another transaction debits the wallet and holds its row lock...
    let mut other = app.db.begin().await.unwrap();
    sqlx::query(
        "UPDATE wallets SET balance = balance - 50, version = version + 1 WHERE user_id = 1",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    // ...while a writer batch reads version 0 and blocks on its UPDATE.
    let intent = Intent {
        buckets: 1,
        order_no: Uuid::now_v7(),
        event_id: sale.id,
        user_id: 1,
        quantity: 1,
        amount: 100,
        accepted_at: Utc::now(),
    };
    let db = app.db.clone();
    let batch = tokio::spawn(async move { persist_batch(&db, &[intent], None).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other.commit().await.unwrap();

    let result = batch
        .await
        .unwrap()
        .expect("batch persisted after retrying the conflict");
    assert_eq!(result.confirmed.len(), 1);
    assert!(
        result.version_conflicts >= 1,
        "the stale version was detected and counted"
    );
    let wallet = app.admin_get("/admin/wallets/1").await;
    assert_eq!(wallet["balance"], 1_000 - 50 - 100);
    assert_eq!(wallet["version"], 2, "two updates, version +2");
    let (version_after,): (i64,) =
        sqlx::query_as("SELECT version_after FROM wallet_debits WHERE order_no = $1")
            .bind(intent.order_no)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(version_after, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shopper_buying_in_two_events_at_once_is_charged_twice_exactly() {
    let app = spawn_app_with(&[("SECKILL_WRITERS", "4"), ("SECKILL_BATCH_MAX", "1")]).await;
    let a = app.open_sale(100, 120, 1).await;
    let b = app.open_sale(100, 80, 1).await;
    app.fund(1, 40, 1_000).await;
    let buyer = app.buyer();
    let requests: Vec<(i64, i64)> = (1..=40).flat_map(|u| [(a.id, u), (b.id, u)]).collect();
    let results = all(requests, |(event, user)| {
        let buyer = buyer.clone();
        async move { buyer.purchase(event, user, json!(1)).await.0 }
    })
    .await;
    assert!(results.iter().all(|s| *s == StatusCode::ACCEPTED));
    app.drain(a.id).await;
    app.drain(b.id).await;
    for user in 1..=40 {
        let wallet = app.admin_get(&format!("/admin/wallets/{user}")).await;
        assert_eq!(
            (wallet["balance"].as_i64(), wallet["version"].as_i64()),
            (Some(1_000 - 200), Some(2)),
            "user {user}: two debits, version +2"
        );
    }
    app.assert_invariants(a.id).await;
    app.assert_invariants(b.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_persists_what_is_queued() {
    // Writers hold a batch open for 30 s, so accepted intents wait in memory.
    let mut app = spawn_app_with(&[
        ("SECKILL_BATCH_LINGER_MS", "30000"),
        ("SECKILL_BATCH_MAX", "100000"),
        ("SECKILL_WRITERS", "1"),
    ])
    .await;
    let sale = app.open_sale(50, 100, 1).await;
    app.fund(1, 50, 1_000).await;
    let buyer = app.buyer();
    let results = all(1..=50i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await.0 }
    })
    .await;
    assert!(results.iter().all(|s| *s == StatusCode::ACCEPTED));
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
            .await,
        0,
        "nothing persisted yet"
    );

    let started = std::time::Instant::now();
    app.stop().await.expect("clean shutdown");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "shutdown does not wait out the linger"
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        50,
        "every queued order persisted before exit"
    );
    assert!(
        app.redis.ledger(sale.id).await.unwrap().is_empty(),
        "and acked in Redis"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intents_whose_redis_writes_were_lost_never_oversell() {
    // Writers hold their batch open, so accepted intents wait in memory.
    let mut app = spawn_app_with(&[
        ("SECKILL_BATCH_LINGER_MS", "30000"),
        ("SECKILL_BATCH_MAX", "100000"),
        ("SECKILL_WRITERS", "1"),
    ])
    .await;
    let sale = app.open_sale(10, 100, 1).await;
    app.fund(1, 20, 1_000).await;
    for user in 1..=10 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    // Redis restarts from an `everysec` AOF that missed the last second: the
    // event is still loaded, but those ten purchases never happened there.
    let keys = app.redis.keys().event(sale.id);
    let client = &app.raw;
    let _: () = fred::prelude::KeysInterface::set(client, &keys.stock, 10, None, None, false)
        .await
        .unwrap();
    let _: i64 = fred::prelude::KeysInterface::del(
        client,
        vec![
            keys.bought.clone(),
            keys.orders.clone(),
            keys.ledger.clone(),
        ],
    )
    .await
    .unwrap();
    // The sale goes on and sells the same ten units again.
    for user in 11..=20 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.stop()
        .await
        .expect("clean shutdown flushes the writers");

    let confirmed = app
        .scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id,
        )
        .await;
    let lost = app
        .scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND failure_reason = 'stock_lost'",
            sale.id,
        )
        .await;
    assert_eq!(confirmed, 10, "exactly the stock is sold");
    assert_eq!(
        lost, 10,
        "the intents Redis lost found no stock left and failed, uncharged"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1", sale.id).await, 10);
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_naming_an_event_postgres_does_not_have_is_refused_whole() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 5).await;
    app.fund(1, 2, 1_000).await;
    let intent = |user_id, event_id| Intent {
        buckets: 1,
        order_no: Uuid::now_v7(),
        event_id,
        user_id,
        quantity: 1,
        amount: 100,
        accepted_at: Utc::now(),
    };
    let batch = [intent(1, sale.id), intent(2, sale.id + 1_000_000)];
    let err = persist_batch(&app.db, &batch, None)
        .await
        .expect_err("no event behind the second intent");
    assert!(!err.is_transient(), "retrying cannot help: {err}");
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE user_id IN (1, 2) AND event_id <> $1",
            0
        )
        .await
            + app
                .scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
                .await,
        0,
        "nothing of the batch was written"
    );
    app.cleanup().await;
}
