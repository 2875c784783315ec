//! Rate limits at the HTTP edge: 429 with `Retry-After`, nothing bought.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_over_the_limit_gets_429_with_retry_after_and_buys_nothing_more() {
    let app = spawn_app_with(&[
        ("SECKILL_RATE_USER_RPS", "1"),
        ("SECKILL_RATE_USER_BURST", "3"),
    ])
    .await;
    let sale = app.open_sale(100, 100, 50).await;
    app.fund(1, 2, 100_000).await;

    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = app
            .http
            .post(app.url(&format!("/api/events/{}/purchase", sale.id)))
            .bearer_auth(app.token(1))
            .json(&json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"], "rate_limited");
            assert!(
                matches!(retry_after, Some(1..=2)),
                "Retry-After in seconds: {retry_after:?}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        3,
        "the burst: {statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        3
    );
    // Another shopper is not affected.
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    app.drain(sale.id).await;
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(96),
        "429s took no stock"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_and_global_limits_apply_to_purchases() {
    let app = spawn_app_with(&[("SECKILL_RATE_IP_RPS", "1"), ("SECKILL_RATE_IP_BURST", "2")]).await;
    let sale = app.open_sale(100, 100, 1).await;
    app.fund(1, 10, 100_000).await;
    let mut statuses = Vec::new();
    for user in 1..=5 {
        statuses.push(app.purchase(sale.id, user, json!(1)).await.0);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        2,
        "one IP, burst 2: {statuses:?}"
    );
    app.cleanup().await;

    let app = spawn_app_with(&[("SECKILL_RATE_GLOBAL_RPS", "2")]).await;
    let sale = app.open_sale(100, 100, 1).await;
    app.fund(1, 10, 100_000).await;
    let mut statuses = Vec::new();
    for user in 1..=5 {
        statuses.push(app.purchase(sale.id, user, json!(1)).await.0);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        2,
        "process budget 2/s: {statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        3
    );
    app.cleanup().await;
}
