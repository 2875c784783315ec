//! Health, readiness, metrics, the dashboard, and operator figures.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_operator_routes() {
    let app = spawn_app().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"redis": "ok", "postgres": "ok"}));

    let sale = app.open_sale(3, 100, 1).await;
    assert_eq!(
        app.preheat(sale.id).await["loaded"],
        false,
        "preheat twice changes nothing"
    );
    app.fund(1, 3, 1_000).await;
    for user in 1..=3 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.drain(sale.id).await;
    // Preheating an event that has orders is refused unless forced, and a
    // forced rebuild reproduces the same state from Postgres.
    let r = app
        .http
        .post(app.url(&format!("/admin/events/{}/preheat", sale.id)))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "an already loaded event is left alone"
    );
    let _: i64 = fred::prelude::KeysInterface::del(&app.raw, app.redis.keys().event(sale.id).meta)
        .await
        .unwrap();
    let r = app
        .http
        .post(app.url(&format!("/admin/events/{}/preheat", sale.id)))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = app
        .http
        .post(app.url(&format!("/admin/events/{}/preheat?force=true", sale.id)))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    assert_eq!(app.redis.buyers(sale.id).await.unwrap().len(), 3);

    let event: Value = app
        .http
        .get(app.url(&format!("/api/events/{}", sale.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (event["stock_left"].as_i64(), event["status"].as_str()),
        (Some(0), Some("sold_out"))
    );
    let admin = app.admin_get(&format!("/admin/events/{}", sale.id)).await;
    assert_eq!(
        (
            admin["sold"].as_i64(),
            admin["confirmed_amount"].as_i64(),
            admin["pending"].as_i64()
        ),
        (Some(3), Some(300), Some(0))
    );
    let wallet = app.admin_get("/admin/wallets/1").await;
    assert_eq!(wallet, json!({"user_id": 1, "balance": 900, "version": 1}));

    let metrics = app.get_as("/metrics", None).await.text().await.unwrap();
    for name in [
        "seckill_purchases_total",
        "seckill_purchase_seconds",
        "seckill_channel_depth",
        "seckill_writer_batch_size",
        "seckill_orders_persisted_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let page = app
        .get_as("/admin/dashboard", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("live sale dashboard"));
    let data = app
        .http
        .get(app.url("/admin/dashboard/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        data.status(),
        StatusCode::UNAUTHORIZED,
        "dashboard data needs the operator token"
    );
    // The sampler's snapshot lists the event within a tick or two.
    let mut data = app.admin_get("/admin/dashboard/data").await;
    for _ in 0..30 {
        if data["events"][0]["id"] == sale.id {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        data = app.admin_get("/admin/dashboard/data").await;
    }
    assert_eq!(data["events"][0]["id"], sale.id, "{data}");

    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}
