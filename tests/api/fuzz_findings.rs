//! Bugs the schemathesis run (`scripts/fuzz-api.sh`) found, each pinned
//! here so it stays fixed without the fuzzer.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, ADMIN_TOKEN};

/// `first_user_id` = 2^63 − 1 with `count` 1 is the last valid id; computing
/// `first + count - 1` left to right overflowed bigint in Postgres (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_the_last_user_id_creates_that_wallet() {
    let app = spawn_app().await;
    let last = i64::MAX;
    let r = app
        .admin_post(
            "/admin/wallets/seed",
            json!({"first_user_id": last, "count": 1, "balance": 7}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["created"], 1, "{report}");
    let wallet: Value = app
        .http
        .get(app.url(&format!("/admin/wallets/{last}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wallet, json!({"user_id": last, "balance": 7, "version": 0}));
    app.cleanup().await;
}

/// A NUL (or any control character) in an event's name reached Postgres,
/// which cannot store it in text: 500. Now 422, and no event is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_an_event_name_is_refused_and_creates_nothing() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    for name in ["h\u{0}3", "tab\there", "bell\u{7}", "c1\u{85}x"] {
        let r = app
            .admin_post(
                "/admin/events",
                json!({"name": name, "price": 1, "stock": 1, "per_user_limit": 1,
                       "starts_at": now, "ends_at": now + chrono::Duration::hours(1)}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0);
    app.cleanup().await;
}

/// A sale window outside the years 1970..=9999: a year Postgres cannot
/// store was a 500, a five-digit year was stored and then rendered as no
/// RFC 3339 date-time. Now 422, and no event is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_window_outside_four_digit_years_is_refused_and_creates_nothing() {
    let app = spawn_app().await;
    for (starts_at, ends_at) in [
        ("-4800-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        ("0059-01-01T00:07:14Z", "0913-12-19T14:46:28.5Z"),
        ("2030-01-01T00:00:00Z", "+10000-01-01T00:00:00Z"),
    ] {
        let r = app
            .admin_post(
                "/admin/events",
                json!({"name": "window", "price": 1, "stock": 1, "per_user_limit": 1,
                       "starts_at": starts_at, "ends_at": ends_at}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{starts_at} {ends_at}"
        );
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0);
    app.cleanup().await;
}

/// A NUL in an operator's reason (wallet credit, refund, stock adjustment)
/// or in an edited event name reached Postgres, which cannot store it in
/// text: the credit answered 500. Now 422 for any control character, and
/// nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_reason_or_edited_name_is_refused_and_records_nothing() {
    let app = spawn_app().await;
    app.fund(1, 1, 500).await;
    let sale = app
        .create_event(
            10,
            1,
            1,
            chrono::Duration::hours(1),
            chrono::Duration::hours(1),
        )
        .await;
    let id = sale.id;
    let ledger_before: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_ledger")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let version = app.admin_get(&format!("/admin/events/{id}")).await["version"].clone();
    for reason in ["nul\u{0}here", "\u{1d}x", "c1\u{85}x", "tab\tin"] {
        let r = app
            .admin_post(
                "/admin/wallets/1/credit",
                json!({"amount": 999, "reason": reason}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{reason:?}");
        let r = app
            .admin_post(
                "/admin/orders/00000000-0000-4000-8000-000000000000/refund",
                json!({"reason": reason}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{reason:?}");
        let r = app
            .admin_post(
                &format!("/admin/events/{id}/stock"),
                json!({"delta": 5, "reason": reason}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{reason:?}");
        let r = app
            .http
            .patch(app.url(&format!("/admin/events/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"version": version, "name": reason}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{reason:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
    let ledger_after: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_ledger")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        ledger_after, ledger_before,
        "no ledger row for a refused credit"
    );
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM wallets WHERE user_id = 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(balance, 500);
    let adjustments: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_adjustments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(adjustments, 0);
    let event = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(event["name"], "test sale");
    assert_eq!(event["version"], version);
    app.cleanup().await;
}

/// A PATCH moving the sale window outside the years 1970..=9999 is refused
/// like a new event's (Postgres, RFC 3339 and the scripts' milliseconds
/// cannot all hold it), and the event keeps its window and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_sale_window_outside_four_digit_years_is_refused() {
    let app = spawn_app().await;
    let sale = app
        .create_event(
            10,
            1,
            1,
            chrono::Duration::hours(1),
            chrono::Duration::hours(1),
        )
        .await;
    let id = sale.id;
    let before = app.admin_get(&format!("/admin/events/{id}")).await;
    for (field, value) in [
        ("ends_at", "+10000-01-01T00:00:00Z"),
        ("starts_at", "0059-01-01T00:07:14Z"),
    ] {
        let r = app
            .http
            .patch(app.url(&format!("/admin/events/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"version": before["version"], field: value}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
    }
    let after = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(after["starts_at"], before["starts_at"]);
    assert_eq!(after["ends_at"], before["ends_at"]);
    assert_eq!(after["version"], before["version"]);
    app.cleanup().await;
}
