//! Orders for operators: the filtered, keyset-paged listing and the
//! streaming export of a whole sale (CSV and NDJSON), produced as Postgres
//! sends rows, not gathered first.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_by_event_user_and_status_a_page_at_a_time() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 3).await;
    let other = app.open_sale(10, 100, 3).await;
    app.fund(1, 3, 1_000).await;
    for user in 1..=3 {
        for _ in 0..2 {
            let (status, _) = app.purchase(sale.id, user, json!(1)).await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
    }
    app.purchase(other.id, 1, json!(1)).await;
    app.purchase(sale.id, 50, json!(1)).await; // no wallet: failed
    app.drain(sale.id).await;
    app.drain(other.id).await;

    let all = app
        .admin_get(&format!("/admin/orders?event_id={}", sale.id))
        .await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 7);
    let mine = app
        .admin_get(&format!("/admin/orders?event_id={}&user_id=1", sale.id))
        .await;
    assert_eq!(mine["orders"].as_array().unwrap().len(), 2);
    let failed = app.admin_get("/admin/orders?status=failed").await;
    assert_eq!(failed["orders"].as_array().unwrap().len(), 1);
    assert_eq!(failed["orders"][0]["user_id"], 50);

    // Pages of 3 walk every order once.
    let mut seen = Vec::new();
    let mut path = format!("/admin/orders?event_id={}&limit=3", sale.id);
    loop {
        let page = app.admin_get(&path).await;
        seen.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_no"].clone()),
        );
        match page["next_after"].as_str() {
            Some(after) => {
                path = format!("/admin/orders?event_id={}&limit=3&after={after}", sale.id)
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    seen.dedup();
    assert_eq!(seen.len(), 7, "no order twice");

    for bad in [
        "/admin/orders?status=lost",
        "/admin/orders?limit=0",
        "/admin/orders?limit=5000",
        "/admin/orders?after=x",
        "/admin/orders?event_id=0",
        "/admin/orders?bogus=1",
    ] {
        let r = app.get_as(bad, Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = app.get_as("/admin/orders", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.get_as("/admin/orders", Some(&app.token(1))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    app.cleanup().await;
}

/// Orders generated straight into Postgres for an export.
const MANY: i64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_sale_is_exported_as_a_stream_with_every_order_once() {
    let app = spawn_app().await;
    let sale = app
        .create_event(
            MANY,
            1,
            1,
            chrono::Duration::seconds(-1),
            chrono::Duration::hours(1),
        )
        .await;
    sqlx::query(
        "INSERT INTO orders (order_no, event_id, user_id, quantity, amount, status, created_at)
         SELECT gen_random_uuid(), $1, g, 1, 1, 'confirmed', now() FROM generate_series(1, $2::int8) AS g",
    )
    .bind(sale.id)
    .bind(MANY)
    .execute(&app.db)
    .await
    .unwrap();

    // CSV: the first chunk comes while Postgres is still sending (the reader
    // is held back by the client), then every row once.
    let mut r = app
        .http
        .get(app.url(&format!(
            "/admin/events/{}/orders/export?format=csv",
            sale.id
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"order_no,event_id,user_id,"));
    // Not reading: the export's query must still be running, held back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (running,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND state = 'active' AND query LIKE '%FROM orders WHERE event_id = $1%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        running, 1,
        "the export streams: its query waits for the client"
    );
    let mut bytes = first.len();
    let mut lines = first.iter().filter(|b| **b == b'\n').count();
    while let Some(chunk) = r.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(
        lines as i64,
        MANY + 1,
        "a header and every order once ({bytes} bytes)"
    );

    // NDJSON: one JSON order per line.
    let r = app
        .http
        .get(app.url(&format!(
            "/admin/events/{}/orders/export?format=ndjson",
            sale.id
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let mut count = 0;
    let mut users = std::collections::HashSet::new();
    for line in text.lines() {
        let order: Value = serde_json::from_str(line).unwrap();
        assert_eq!(order["event_id"], sale.id);
        users.insert(order["user_id"].as_i64().unwrap());
        count += 1;
    }
    assert_eq!(count, MANY);
    assert_eq!(users.len() as i64, MANY, "every order once");

    let r = app
        .get_as(
            &format!("/admin/events/{}/orders/export?format=xml", sale.id),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .get_as("/admin/events/999999/orders/export", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .get_as(&format!("/admin/events/{}/orders/export", sale.id), None)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.cleanup().await;
}
