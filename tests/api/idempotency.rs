//! `Idempotency-Key`: one side effect per (user, key, request).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_make_one_order() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 3).await;
    app.fund(1, 1, 10_000).await;

    let buyer = app.buyer();
    let results = all(0..20, |_| {
        let buyer = buyer.clone();
        async move {
            buyer
                .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("order-key-1"))
                .await
        }
    })
    .await;
    let accepted: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, b)| b["order_no"].clone())
        .collect();
    assert!(!accepted.is_empty());
    assert!(
        accepted.iter().all(|o| *o == accepted[0]),
        "one order_no for every 202: {accepted:?}"
    );
    for (status, body) in &results {
        assert!(
            *status == StatusCode::ACCEPTED
                || (*status == StatusCode::CONFLICT && body["error"] == "in_progress"),
            "{status} {body}"
        );
    }

    // Once done, a replay answers the same.
    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("order-key-1"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["order_no"], accepted[0]);
    // Same key, other body → 422; other key → a second order.
    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 2}), Some("order-key-1"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("order-key-2"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(body["order_no"], accepted[0]);

    app.drain(sale.id).await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
            .await,
        2
    );
    assert_eq!(app.stock_left(sale.id).await, Some(8));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_replayed_too_and_keys_are_per_user() {
    let app = spawn_app().await;
    let sale = app.open_sale(1, 100, 1).await;
    app.fund(1, 3, 10_000).await;
    assert_eq!(
        app.purchase(sale.id, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = app
        .purchase_with(sale.id, 2, json!({"quantity": 1}), Some("k"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    let (status, again) = app
        .purchase_with(sale.id, 2, json!({"quantity": 1}), Some("k"))
        .await;
    assert_eq!((status, again), (StatusCode::CONFLICT, body));
    // The same key string of another user is another key (were keys global,
    // this request for another event would be refused as a reused key).
    let other = app.open_sale(5, 100, 1).await;
    let (status, body) = app
        .purchase_with(other.id, 3, json!({"quantity": 1}), Some("k"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_sell_out_still_gets_its_202() {
    let app = spawn_app().await;
    let sale = app.open_sale(1, 100, 1).await;
    app.fund(1, 2, 10_000).await;
    let (status, first) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("buy-once"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Sold out now, and this process knows it locally.
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.1["error"],
        "sold_out"
    );
    let (status, again) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("buy-once"))
        .await;
    assert_eq!((status, again), (StatusCode::ACCEPTED, first));
    app.cleanup().await;
}

/// The key records of concurrent requests share statements: every key ends
/// up with exactly one order, also when one key arrives twice in a batch
/// with different order_nos (possible only across a Redis loss), and every
/// record is committed when `record` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_key_statements_give_each_key_one_order() {
    use seckill::idempotency::{DurableKeys, KeyToRecord};

    let app = spawn_app().await;
    let keys = DurableKeys::spawn(app.db.clone());
    let expires_at = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let to_record = |user_id: i64, key: &str| KeyToRecord {
        user_id,
        key: key.to_owned(),
        fingerprint: "1:1".into(),
        order_no: uuid::Uuid::now_v7(),
        event_id: 1,
        expires_at,
    };
    // 300 distinct keys and 40 attempts at one contested key, all at once.
    let jobs: Vec<KeyToRecord> = (1..=300)
        .map(|u| to_record(u, "k"))
        .chain((0..40).map(|_| to_record(999, "contested")))
        .collect();
    let results = all(jobs.clone(), |job| {
        let keys = keys.clone();
        async move { keys.record(job).await.unwrap() }
    })
    .await;
    for (job, got) in jobs.iter().zip(&results).take(300) {
        assert_eq!(got.order_no, job.order_no, "a free key keeps its own order");
    }
    let winners: std::collections::HashSet<_> = results[300..].iter().map(|r| r.order_no).collect();
    assert_eq!(winners.len(), 1, "every attempt at one key sees one order");
    let winner = *winners.iter().next().unwrap();
    assert!(jobs[300..].iter().any(|j| j.order_no == winner));
    // Committed, and readable through the same path.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 301);
    let found = keys.find(999, "contested").await.unwrap().unwrap();
    assert_eq!(found.order_no, winner);
    assert!(keys.find(999, "never-used").await.unwrap().is_none());
    app.cleanup().await;
}
