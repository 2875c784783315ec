//! Bad input gets a clear JSON error and changes nothing.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purchase_requests_change_nothing() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 2).await;
    app.fund(1, 1, 10_000).await;
    let keys_before = app.redis_key_count().await;
    let url = app.url(&format!("/api/events/{}/purchase", sale.id));
    let token = app.token(1);
    let huge = format!(r#"{{"quantity": 1, "pad": "{}"}}"#, "x".repeat(64 * 1024));

    let cases: Vec<(&str, String, &str, StatusCode)> = vec![
        (
            "malformed json",
            r#"{"quantity": "#.into(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an object",
            "[1]".into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity 0",
            r#"{"quantity": 0}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity -1",
            r#"{"quantity": -1}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity 1.5",
            r#"{"quantity": 1.5}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity as string",
            r#"{"quantity": "1"}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity above limit",
            r#"{"quantity": 3}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity huge",
            r#"{"quantity": 100000000000000000000000}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "quantity i64 max",
            r#"{"quantity": 9223372036854775807}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing quantity",
            "{}".into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            r#"{"quantity": 1, "price": 0}"#.into(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong content type",
            r#"{"quantity": 1}"#.into(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "oversized body",
            huge,
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (case, body, content_type, expected) in cases {
        let r = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{case}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{case}: JSON error body expected: {e}"));
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{case}: {body}"
        );
    }

    let bad_keys = ["", &"k".repeat(256), "clé", "tab\tkey"];
    for key in bad_keys {
        let r = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await;
        // reqwest refuses some header values itself; those never reach us.
        if let Ok(r) = r {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "key {key:?}");
        }
    }

    let paths = [
        ("/api/events/999999/purchase", StatusCode::NOT_FOUND),
        ("/api/events/abc/purchase", StatusCode::BAD_REQUEST),
        ("/api/events/-4/purchase", StatusCode::BAD_REQUEST),
        (
            "/api/events/99999999999999999999/purchase",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, expected) in paths {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(&token)
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    assert_eq!(app.stock_left(sale.id).await, Some(10));
    assert!(app.redis.ledger(sale.id).await.unwrap().is_empty());
    assert_eq!(
        app.redis_key_count().await,
        keys_before,
        "no Redis key created by bad input"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
            .await,
        0
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_refused() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    let bodies = [
        serde_json::json!({"name": "", "price": 1, "stock": 1, "per_user_limit": 1, "starts_at": now, "ends_at": now + chrono::Duration::hours(1)}),
        serde_json::json!({"name": "x", "price": -1, "stock": 1, "per_user_limit": 1, "starts_at": now, "ends_at": now + chrono::Duration::hours(1)}),
        serde_json::json!({"name": "x", "price": 1, "stock": 1, "per_user_limit": 0, "starts_at": now, "ends_at": now + chrono::Duration::hours(1)}),
        serde_json::json!({"name": "x", "price": 1, "stock": 1, "per_user_limit": 1, "starts_at": now, "ends_at": now}),
        serde_json::json!({"name": "x", "price": 1, "stock": 1, "per_user_limit": 1, "starts_at": "yesterday", "ends_at": now}),
    ];
    for body in bodies {
        let r = app.admin_post("/admin/events", body.clone()).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let r = app
        .admin_post(
            "/admin/wallets/seed",
            serde_json::json!({"first_user_id": 9223372036854775807i64, "count": 2, "balance": 1}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .http
        .put(app.url("/admin/wallets/5"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&serde_json::json!({"balance": -5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.scalar("SELECT count(*) FROM events WHERE $1 = $1", 0)
            .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM wallets WHERE $1 = $1", 0)
            .await,
        0
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_the_json_error_body() {
    let app = spawn_app().await;
    let sale = app.open_sale(5, 100, 1).await;
    let keys_before = app.redis_key_count().await;
    let admin = crate::helpers::ADMIN_TOKEN;
    let shopper = app.token(1);
    let get = |path: &str, token: &str| app.http.get(app.url(path)).bearer_auth(token.to_string());
    let post = |path: &str, token: &str| {
        app.http
            .post(app.url(path))
            .bearer_auth(token.to_string())
            .header("content-type", "application/json")
            .body(r#"{"quantity": 1}"#)
    };
    let cases = vec![
        (
            "query that does not parse",
            post(
                &format!("/admin/events/{}/preheat?force=yes", sale.id),
                admin,
            ),
            400,
        ),
        (
            "undecodable order_no",
            get("/api/orders/%FF%FE", &shopper),
            400,
        ),
        ("undecodable event id", get("/api/events/%FF", admin), 400),
        (
            "undecodable purchase path",
            post("/api/events/%C3%28/purchase", &shopper),
            400,
        ),
        (
            "non-numeric wallet id",
            get("/admin/wallets/abc", admin),
            400,
        ),
        ("unknown route", get("/api/nothing-here", admin), 404),
        (
            "wrong method",
            get(&format!("/api/events/{}/purchase", sale.id), &shopper),
            405,
        ),
    ];
    for (case, request, want) in cases {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{case}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{case}: {content_type}"
        );
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{case}: {body}"
        );
    }
    assert_eq!(app.redis_key_count().await, keys_before, "nothing created");
    app.cleanup().await;
}
