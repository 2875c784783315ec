//! The live dashboard's data: one-second samples shared by every poll, with
//! the sale's stock, pending intents, rates and alerts over time.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{all, spawn_app};

/// Polls the data until `ready` holds (at most ~6 s of samples).
async fn data_when(app: &crate::helpers::TestApp, ready: impl Fn(&Value) -> bool) -> Value {
    let mut data = Value::Null;
    for _ in 0..60 {
        data = app.admin_get("/admin/dashboard/data").await;
        if ready(&data) {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("dashboard data never got there: {data:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn samples_follow_the_sale_and_polls_share_one_snapshot() {
    let app = spawn_app().await;
    let sale = app.open_sale(20, 100, 1).await;
    app.fund(1, 30, 1_000).await;
    let buyer = app.buyer();
    all(1..=30i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await }
    })
    .await;
    app.drain(sale.id).await;

    // A sample taken after the sale: stock 0, 20 sold, nothing pending.
    let last_event = |d: &Value| {
        d["samples"]
            .as_array()
            .and_then(|s| s.last())
            .map(|s| s["events"][0].clone())
            .unwrap_or(Value::Null)
    };
    let data = data_when(&app, |d| {
        let e = last_event(d);
        e["id"] == sale.id && e["stock_left"] == 0 && e["sold"] == 20 && e["pending"] == 0
    })
    .await;
    let samples = data["samples"].as_array().unwrap();
    assert!(samples.len() <= seckill::dashboard::KEEP);
    // Somewhere in the samples the purchases were counted by outcome:
    // this process's rates (other tests in the binary buy too, so ≥).
    let accepted: f64 = samples
        .iter()
        .filter_map(|s| s["purchases"]["accepted"].as_f64())
        .sum();
    assert!(accepted > 0.0, "{data:#}");
    let event = &data["events"][0];
    assert_eq!(event["id"], sale.id);
    assert_eq!(event["stock_total"], 20);
    assert!(event["sold_out_at_ms"].as_i64().is_some(), "{event}");
    assert!(event["starts_at_ms"].as_i64().unwrap() <= event["sold_out_at_ms"].as_i64().unwrap());
    assert_eq!(data["alerts"], json!([]), "a healthy sale raises no alert");

    // Two polls within the same second are the same snapshot (no work per poll).
    let (a, b) = (
        app.admin_get("/admin/dashboard/data").await,
        app.admin_get("/admin/dashboard/data").await,
    );
    if a["now_ms"] == b["now_ms"] {
        assert_eq!(a, b);
    }
    let page = app
        .get_as("/admin/dashboard", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("<canvas"), "the page draws charts");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_cancellations_refunds_adjustments_and_a_pause() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    let created: Value = app
        .admin_post(
            "/admin/events",
            json!({"name": "watched", "price": 100, "stock": 10, "per_user_limit": 1,
                   "starts_at": now - chrono::Duration::seconds(1),
                   "ends_at": now + chrono::Duration::hours(1),
                   "cancel_window_seconds": 600}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    app.preheat(id).await;
    app.fund(1, 3, 1_000).await;
    let mut orders = Vec::new();
    for user in 1..=3 {
        let (status, body) = app.purchase(id, user, json!(1)).await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
        orders.push(body["order_no"].as_str().unwrap().to_owned());
    }
    app.drain(id).await;
    let cancel = app
        .http
        .post(app.url(&format!("/api/orders/{}/cancel", orders[0])))
        .bearer_auth(app.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), reqwest::StatusCode::OK);
    let refund = app
        .admin_post(
            &format!("/admin/orders/{}/refund", orders[1]),
            json!({"reason": "damaged"}),
        )
        .await;
    assert_eq!(refund.status(), reqwest::StatusCode::OK);
    let adjusted = app
        .admin_post(
            &format!("/admin/events/{id}/stock"),
            json!({"delta": 5, "reason": "delivery"}),
        )
        .await;
    assert_eq!(adjusted.status(), reqwest::StatusCode::OK);
    let paused = app
        .admin_post(&format!("/admin/events/{id}/pause"), json!({}))
        .await;
    assert_eq!(paused.status(), reqwest::StatusCode::OK);

    let data = data_when(&app, |d| {
        let e = d["samples"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|s| s["events"].as_array())
            .and_then(|es| es.iter().find(|e| e["id"] == id).cloned())
            .unwrap_or(Value::Null);
        e["cancelled"] == 1 && e["refunded"] == 1 && e["adjusted"] == 5 && e["paused"] == true
    })
    .await;
    let page = app
        .get_as("/admin/dashboard", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("refunded") && page.contains("stock adjusted"));
    assert!(data["samples"].as_array().is_some_and(|s| !s.is_empty()));
    app.cleanup().await;
}
