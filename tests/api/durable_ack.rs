//! `SECKILL_ACK=durable`: a 202 only after the order's batch is committed,
//! so no Redis persistence mode can lose an acknowledged purchase.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_202_is_committed_before_it_is_sent() {
    let app = spawn_app_with(&[("SECKILL_ACK", "durable")]).await;
    let sale = app.open_sale(20, 100, 1).await;
    app.fund(1, 30, 1_000).await;
    // Shopper 31 has no wallet.
    let buyer = app.buyer();
    let answers = all(1..=31i64, |u| {
        let buyer = buyer.clone();
        async move { (u, buyer.purchase(sale.id, u, json!(1)).await) }
    })
    .await;
    // Redis loses everything the moment the answers are out.
    app.lose_redis_state().await;

    let mut acknowledged = Vec::new();
    let mut confirmed = 0;
    for (user, (status, body)) in &answers {
        if *status != StatusCode::ACCEPTED {
            assert_eq!(body["error"], "sold_out", "{body}");
            continue;
        }
        let (order_status, reason) = (body["status"].as_str(), body["failure_reason"].as_str());
        if *user == 31 {
            assert_eq!(
                (order_status, reason),
                (Some("failed"), Some("no_wallet")),
                "{body}"
            );
        } else {
            assert_eq!(order_status, Some("confirmed"), "{body}");
            confirmed += 1;
        }
        acknowledged.push(
            body["order_no"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    assert!((19..=20).contains(&confirmed), "{answers:?}");
    let (persisted,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM orders WHERE order_no = ANY($1)")
            .bind(&acknowledged)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        persisted as usize,
        acknowledged.len(),
        "every acknowledged purchase is in Postgres without any drain"
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        confirmed,
        "what was told confirmed is exactly what is confirmed"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_202_while_postgres_cannot_commit_and_a_keyed_retry_gets_the_committed_order() {
    let app = spawn_app_with(&[
        ("SECKILL_ACK", "durable"),
        ("SECKILL_ACK_TIMEOUT_MS", "500"),
    ])
    .await;
    let sale = app.open_sale(5, 100, 1).await;
    app.fund(1, 1, 1_000).await;
    // The writer's debit of shopper 1 blocks on this lock.
    let mut hold = app.db.begin().await.unwrap();
    sqlx::query("SELECT balance FROM wallets WHERE user_id = 1 FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("K"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "not committed in time: no 202, {body}"
    );
    hold.commit().await.unwrap();
    app.drain(sale.id).await;

    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 1}), Some("K"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "confirmed");
    let order_no: uuid::Uuid = body["order_no"].as_str().unwrap().parse().unwrap();
    let (status,): (String,) = sqlx::query_as("SELECT status FROM orders WHERE order_no = $1")
        .bind(order_no)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        status, "confirmed",
        "the retry names the order that was committed"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
            .await,
        1
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}
