//! The reconciler: a full channel loses nothing, drift is repaired with a
//! check-then-write, a lost Redis event is rebuilt, a second pass is quiet.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{all, spawn_app, spawn_app_with, ADMIN_TOKEN};

async fn reconcile(app: &crate::helpers::TestApp) -> Value {
    let r = app
        .http
        .post(app.url("/admin/reconcile"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_channel_still_persists_every_acknowledged_purchase() {
    let app = spawn_app_with(&[
        ("SECKILL_CHANNEL_CAPACITY", "1"),
        ("SECKILL_WRITERS", "1"),
        ("SECKILL_BATCH_MAX", "1"),
        ("SECKILL_RECONCILE_INTERVAL_MS", "200"),
        ("SECKILL_RECONCILE_GRACE_MS", "300"),
    ])
    .await;
    let sale = app.open_sale(80, 100, 1).await;
    app.fund(1, 120, 1_000).await;
    let buyer = app.buyer();
    let results = all(1..=120i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await }
    })
    .await;
    let accepted: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, b)| b["order_no"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(accepted.len(), 80);
    app.drain(sale.id).await;
    for order_no in &accepted {
        let n = app
            .scalar(
                &format!("SELECT count(*) FROM orders WHERE order_no = '{order_no}' AND $1 = $1"),
                0,
            )
            .await;
        assert_eq!(n, 1, "acknowledged order {order_no} persisted once");
    }
    let replayed = app
        .scalar(
            "SELECT count(*) FROM reconcile_discrepancies WHERE kind = 'unpersisted_intent' AND event_id = $1",
            sale.id,
        )
        .await;
    assert!(
        replayed > 0,
        "the channel overflowed and the reconciler replayed from the ledger"
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_a_second_pass_finds_nothing() {
    let app = spawn_app().await;
    let sale = app.open_sale(20, 100, 2).await;
    app.fund(1, 5, 1_000).await;
    for user in 1..=5 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.drain(sale.id).await;
    assert!(
        reconcile(&app).await["discrepancies"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a healthy sale has no drift"
    );

    // Corrupt Redis: stock inflated, a buyer's count lost, a phantom buyer.
    let keys = app.redis.keys().event(sale.id);
    let client = &app.raw;
    let _: i64 = fred::prelude::KeysInterface::incr_by(client, &keys.stock, 7)
        .await
        .unwrap();
    let _: i64 = fred::prelude::HashesInterface::hdel(client, &keys.bought, "3")
        .await
        .unwrap();
    let _: i64 = fred::prelude::HashesInterface::hset(client, &keys.bought, ("99", 2))
        .await
        .unwrap();
    let report = app
        .admin_get(&format!("/admin/events/{}/invariants", sale.id))
        .await;
    assert_eq!(report["ok"], false, "the checker sees the drift");

    let first = reconcile(&app).await;
    let kinds: Vec<&str> = first["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"stock_drift")
            && kinds.iter().filter(|k| **k == "buyer_drift").count() == 2,
        "{first:#}"
    );
    // The buyers are repaired a page at a time, then the stock.
    assert!(first["repairs"].as_i64().unwrap() >= 2, "{first:#}");
    assert_eq!(app.stock_left(sale.id).await, Some(15));
    let buyers = app.redis.buyers(sale.id).await.unwrap();
    assert_eq!((buyers.get(&3), buyers.get(&99)), (Some(&1), None));

    let second = reconcile(&app).await;
    assert!(
        second["discrepancies"].as_array().unwrap().is_empty(),
        "second pass changes nothing: {second:#}"
    );
    assert_eq!(second["repairs"], 0);
    let recorded = app
        .scalar(
            "SELECT count(*) FROM reconcile_discrepancies WHERE event_id = $1",
            sale.id,
        )
        .await;
    assert_eq!(recorded, 3);
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_redis_lost_is_rebuilt_and_the_sale_continues_without_oversell() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 1).await;
    app.fund(1, 30, 1_000).await;
    for user in 1..=6 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.drain(sale.id).await;
    // Redis restarted without persistence: every key of the deployment is gone.
    app.lose_redis_state().await;
    let (status, body) = app.purchase(sale.id, 7, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active")),
        "no sale without state"
    );

    let report = reconcile(&app).await;
    assert_eq!(
        report["discrepancies"][0]["kind"], "redis_state_lost",
        "{report:#}"
    );
    assert_eq!(app.stock_left(sale.id).await, Some(4));
    assert_eq!(
        app.purchase(sale.id, 1, json!(1)).await.1["error"],
        "limit_exceeded",
        "buyer records rebuilt"
    );
    let buyer = app.buyer();
    let results = all(7..=30i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await.0 }
    })
    .await;
    assert_eq!(
        results
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        4,
        "only the rest of the stock is sold"
    );
    app.drain(sale.id).await;
    assert!(reconcile(&app).await["discrepancies"]
        .as_array()
        .unwrap()
        .is_empty());
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_events_are_closed_out_of_redis_a_day_later_once_persisted() {
    let app = spawn_app().await;
    let insert = |starts: &str, ends: &str| {
        format!("INSERT INTO events (name, price, stock_total, per_user_limit, starts_at, ends_at, preheated_at) VALUES ('old', 100, 10, 1, now() - interval '{starts}', now() - interval '{ends}', now() - interval '{starts}') RETURNING id")
    };
    let mut ids = Vec::new();
    for (starts, ends) in [
        ("3 days", "2 days"),
        ("3 days", "2 days"),
        ("2 hours", "1 hour"),
    ] {
        let (id,): (i64,) = sqlx::query_as(&insert(starts, ends))
            .fetch_one(&app.db)
            .await
            .unwrap();
        let event = seckill::db::events::get(&app.db, id)
            .await
            .unwrap()
            .unwrap();
        assert!(app
            .redis
            .preheat(id, seckill::loading::sale_params(&event))
            .await
            .unwrap());
        ids.push(id);
    }
    // The second one still has an intent nobody persisted.
    let _: i64 = fred::prelude::HashesInterface::hset(
        &app.raw,
        app.redis.keys().event(ids[1]).ledger,
        (uuid::Uuid::now_v7().to_string(), "7:1:100:1"),
    )
    .await
    .unwrap();

    // This pass, or the background loop's first one if a slow start made it
    // run after the events were written (its first tick is immediate): the
    // state below is what counts, not which pass reported it.
    reconcile(&app).await;
    assert!(
        !app.redis.is_loaded(ids[0]).await.unwrap(),
        "ended two days ago, persisted: closed out"
    );
    assert!(!app.redis.live_events().await.unwrap().contains(&ids[0]));
    assert!(
        app.redis.is_loaded(ids[2]).await.unwrap(),
        "ended an hour ago: kept"
    );
    // The one with a pending intent is first persisted by the replay...
    let again = reconcile(&app).await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", ids[1])
            .await,
        1,
        "{again:#}"
    );
    // ...and closed out by the pass after.
    reconcile(&app).await;
    assert!(!app.redis.is_loaded(ids[1]).await.unwrap());
    app.cleanup().await;
}
