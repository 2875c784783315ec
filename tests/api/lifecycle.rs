//! The sale lifecycle, operator side: the event list, versioned edits, the
//! kill switch (end, pause, resume) and stock adjustments, with bad input,
//! races against a crowd and a crash's leftovers settled by the reconciler.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{all, spawn_app, TestApp, ADMIN_TOKEN};

/// An operator call: (status, body).
async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, path: &str) -> (StatusCode, Value) {
    admin(app, Method::POST, path, None, None).await
}

async fn adjust(app: &TestApp, id: i64, delta: i64, key: Option<&str>) -> (StatusCode, Value) {
    admin(
        app,
        Method::POST,
        &format!("/admin/events/{id}/stock"),
        Some(json!({"delta": delta, "reason": "supplier delivery"})),
        key,
    )
    .await
}

async fn patch(app: &TestApp, id: i64, body: Value) -> (StatusCode, Value) {
    admin(
        app,
        Method::PATCH,
        &format!("/admin/events/{id}"),
        Some(body),
        None,
    )
    .await
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Ids of every page of `GET /admin/events?{query}`, following `next`.
async fn list_ids(app: &TestApp, query: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .admin_get(&format!("/admin/events?{query}&after={after}"))
            .await;
        ids.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_list_pages_by_id_and_filters_by_lifecycle() {
    let app = spawn_app().await;
    let scheduled = app
        .create_event(
            5,
            100,
            1,
            chrono::Duration::hours(1),
            chrono::Duration::hours(1),
        )
        .await
        .id;
    let running = app.open_sale(5, 100, 1).await.id;
    let paused = app.open_sale(5, 100, 1).await.id;
    let ended = app.open_sale(5, 100, 1).await.id;
    let sold_out = app.open_sale(1, 100, 1).await.id;
    app.fund(1, 10, 10_000).await;
    assert_eq!(
        post(&app, &format!("/admin/events/{paused}/pause")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post(&app, &format!("/admin/events/{ended}/end")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.purchase(sold_out, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );

    // Pages of 2 follow `next` through every event, in id order, once each.
    let every = list_ids(&app, "limit=2").await;
    assert_eq!(every, vec![scheduled, running, paused, ended, sold_out]);
    let first = app.admin_get("/admin/events?limit=2").await;
    assert_eq!(first["next"], running, "next is the last id of the page");
    let one = &first["events"][0];
    assert_eq!(one["lifecycle"], "scheduled");
    assert!(one["version"].is_i64() && one["stock_left"].is_i64());

    for (status, id) in [
        ("scheduled", scheduled),
        ("running", running),
        ("paused", paused),
        ("ended", ended),
        ("sold_out", sold_out),
    ] {
        assert_eq!(
            list_ids(&app, &format!("status={status}")).await,
            vec![id],
            "{status}"
        );
        let page = app
            .admin_get(&format!("/admin/events?status={status}"))
            .await;
        assert_eq!(page["events"][0]["lifecycle"], status);
        assert_eq!(page["next"], Value::Null);
    }

    for bad in [
        "status=active",
        "limit=0",
        "limit=201",
        "after=-1",
        "limit=x",
        "color=red",
    ] {
        let r = app
            .get_as(&format!("/admin/events?{bad}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{bad}");
    }
    assert_eq!(
        app.get_as("/admin/events", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let shopper = app.token(1);
    assert_eq!(
        app.get_as("/admin/events", Some(&shopper)).await.status(),
        StatusCode::FORBIDDEN
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_refuses_purchases_until_resume_and_end_refuses_for_good() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 1).await;
    app.fund(1, 10, 10_000).await;
    let id = sale.id;
    assert_eq!(app.purchase(id, 1, json!(1)).await.0, StatusCode::ACCEPTED);

    let (status, paused) = post(&app, &format!("/admin/events/{id}/pause")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(paused["lifecycle"], "paused");
    assert!(paused["paused_at"].is_string());
    let version = paused["version"].as_i64().unwrap();
    let (status, body) = app.purchase(id, 2, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sale_paused"))
    );
    let page: Value = app
        .get_as(&format!("/api/events/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["status"], "paused",
        "this process's page shows it at once"
    );
    // Pausing twice changes nothing.
    let (status, again) = post(&app, &format!("/admin/events/{id}/pause")).await;
    assert_eq!(
        (status, again["version"].as_i64()),
        (StatusCode::OK, Some(version))
    );

    let (status, resumed) = post(&app, &format!("/admin/events/{id}/resume")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["lifecycle"], "running");
    assert_eq!(resumed["paused_at"], Value::Null);
    assert_eq!(resumed["version"], version + 1);
    assert_eq!(app.purchase(id, 2, json!(1)).await.0, StatusCode::ACCEPTED);

    let (status, ended) = post(&app, &format!("/admin/events/{id}/end")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["lifecycle"], "ended");
    assert!(time(&ended["ends_at"]) <= Utc::now());
    let (status, body) = app.purchase(id, 3, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active"))
    );
    // Ending twice changes nothing; an ended sale neither pauses nor resumes.
    let (status, again) = post(&app, &format!("/admin/events/{id}/end")).await;
    assert_eq!(
        (status, &again["ends_at"]),
        (StatusCode::OK, &ended["ends_at"])
    );
    for action in ["pause", "resume"] {
        let (status, body) = post(&app, &format!("/admin/events/{id}/{action}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("sale_ended"))
        );
    }
    // The end is in Postgres too: a rebuild from it keeps the sale closed.
    let (db_ends,): (DateTime<Utc>,) = sqlx::query_as("SELECT ends_at FROM events WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(db_ends, time(&ended["ends_at"]));

    for action in ["end", "pause", "resume"] {
        assert_eq!(
            post(&app, &format!("/admin/events/999/{action}")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            post(&app, &format!("/admin/events/x/{action}")).await.0,
            StatusCode::BAD_REQUEST
        );
        let r = app
            .http
            .post(app.url(&format!("/admin/events/{id}/{action}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    app.drain(id).await;
    app.assert_invariants(id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_needs_the_current_version_and_after_the_start_only_the_end_and_stock_move() {
    let app = spawn_app().await;
    let later = app
        .create_event(
            10,
            100,
            1,
            chrono::Duration::hours(1),
            chrono::Duration::hours(1),
        )
        .await
        .id;
    app.preheat(later).await;
    let seen = app.admin_get(&format!("/admin/events/{later}")).await;
    let version = seen["version"].as_i64().unwrap();
    let starts = time(&seen["starts_at"]) + chrono::Duration::minutes(10);

    let (status, edited) = patch(
        &app,
        later,
        json!({"version": version, "name": "renamed", "price": 300, "per_user_limit": 2,
               "starts_at": starts, "stock": 50}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["version"], version + 1, "one edit, one version");
    assert_eq!(
        (edited["name"].as_str(), edited["price"].as_i64()),
        (Some("renamed"), Some(300))
    );
    assert_eq!(
        (
            edited["stock_total"].as_i64(),
            edited["stock_left"].as_i64()
        ),
        (Some(50), Some(50))
    );
    // The preheated sale in Redis moved in the same step.
    let loaded = app.redis.loaded_params(later).await.unwrap().unwrap();
    assert_eq!((loaded.price, loaded.per_user_limit), (300, 2));
    assert_eq!(loaded.starts_ms, starts.timestamp_millis());

    // The version read before is stale now.
    let (status, body) = patch(&app, later, json!({"version": version, "price": 1})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict"))
    );
    assert_eq!(body["version"], version + 1);
    let v = version + 1;
    for (bad, want) in [
        (
            json!({"version": v, "price": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"version": v, "per_user_limit": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"version": v, "stock": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"version": v, "name": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"version": v, "ends_at": starts - chrono::Duration::minutes(1)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"version": v, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"price": 5}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, body) = patch(&app, later, bad.clone()).await;
        assert_eq!(status, want, "{bad} -> {body}");
        assert_eq!(body["error"], "invalid_request", "{bad}");
    }
    let r = app
        .http
        .patch(app.url(&format!("/admin/events/{later}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        patch(&app, 999, json!({"version": 0})).await.0,
        StatusCode::NOT_FOUND
    );
    let r = app
        .http
        .patch(app.url(&format!("/admin/events/{later}")))
        .json(&json!({"version": v}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let after = app.admin_get(&format!("/admin/events/{later}")).await;
    assert_eq!(after["version"], v, "refused edits change nothing");

    // A sale that has started: price, limit, start and name stay.
    let open = app.open_sale(10, 100, 1).await.id;
    app.fund(1, 5, 10_000).await;
    assert_eq!(
        app.purchase(open, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    let seen = app.admin_get(&format!("/admin/events/{open}")).await;
    let v = seen["version"].as_i64().unwrap();
    for (field, value) in [
        ("price", json!(1)),
        ("per_user_limit", json!(3)),
        ("starts_at", json!(Utc::now())),
        ("name", json!("other")),
    ] {
        let (status, body) = patch(&app, open, json!({"version": v, field: value})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("sale_started")),
            "{field}"
        );
        assert_eq!(body["field"], field);
    }
    // The end moves (in Redis too), and the stock, in one versioned step.
    let ends = time(&seen["ends_at"]) + chrono::Duration::hours(2);
    let (status, edited) = patch(
        &app,
        open,
        json!({"version": v, "ends_at": ends, "stock": 15}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["version"], v + 1);
    assert_eq!(
        (
            edited["stock_total"].as_i64(),
            edited["stock_left"].as_i64()
        ),
        (Some(15), Some(14))
    );
    let loaded = app.redis.loaded_params(open).await.unwrap().unwrap();
    assert_eq!(loaded.ends_ms, ends.timestamp_millis());
    // Withdrawing below what is sold is refused, and changes nothing.
    let (status, body) = patch(
        &app,
        open,
        json!({"version": v + 1, "stock": 0, "ends_at": ends + chrono::Duration::hours(1)}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_stock"))
    );
    assert_eq!(body["stock_left"], 14);
    let after = app.admin_get(&format!("/admin/events/{open}")).await;
    assert_eq!(
        (after["version"].as_i64(), after["stock_total"].as_i64()),
        (Some(v + 1), Some(15))
    );
    assert_eq!(
        app.redis
            .loaded_params(open)
            .await
            .unwrap()
            .unwrap()
            .ends_ms,
        ends.timestamp_millis()
    );

    app.drain(open).await;
    app.assert_invariants(open).await;
    app.assert_invariants(later).await;
    // An ended sale takes no edit.
    post(&app, &format!("/admin/events/{open}/end")).await;
    let v = app.admin_get(&format!("/admin/events/{open}")).await["version"]
        .as_i64()
        .unwrap();
    let (status, body) = patch(&app, open, json!({"version": v, "ends_at": ends})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sale_ended"))
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_adjustments_add_and_withdraw_unsold_units_once() {
    let app = spawn_app().await;
    let id = app.open_sale(10, 100, 1).await.id;
    app.fund(1, 30, 10_000).await;
    for user in 1..=3 {
        assert_eq!(
            app.purchase(id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }

    let (status, added) = adjust(&app, id, 5, None).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["adjustment"]["state"], "applied");
    assert_eq!(
        (
            added["event"]["stock_total"].as_i64(),
            added["event"]["stock_left"].as_i64()
        ),
        (Some(15), Some(12))
    );

    let (status, body) = adjust(&app, id, -13, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_stock"))
    );
    assert_eq!(body["stock_left"], 12);
    assert_eq!(
        app.stock_left(id).await,
        Some(12),
        "a refused withdrawal moves nothing"
    );

    // A keyed withdrawal, retried: applied once, answered the same.
    let (status, first) = adjust(&app, id, -12, Some("withdraw-1")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, retry) = adjust(&app, id, -12, Some("withdraw-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retry["adjustment"]["id"], first["adjustment"]["id"]);
    assert_eq!(retry["event"]["stock_total"], 3);
    assert_eq!(app.stock_left(id).await, Some(0));
    let (status, body) = adjust(&app, id, -11, Some("withdraw-1")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    let (status, body) = app.purchase(id, 4, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    // Units added after a sell-out are on sale again at once (the local
    // sold-out flag is cleared).
    assert_eq!(adjust(&app, id, 2, None).await.0, StatusCode::OK);
    assert_eq!(app.purchase(id, 5, json!(1)).await.0, StatusCode::ACCEPTED);

    let path = format!("/admin/events/{id}/stock");
    for bad in [
        json!({"delta": 0, "reason": "x"}),
        json!({"delta": 1}),
        json!({"delta": 1, "reason": ""}),
        json!({"delta": 1.5, "reason": "x"}),
        json!({"delta": 2_000_000_000i64, "reason": "x"}),
        json!({"delta": 1, "reason": "x", "extra": 1}),
    ] {
        let (status, body) = admin(&app, Method::POST, &path, Some(bad.clone()), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
    }
    assert_eq!(adjust(&app, 999, 1, None).await.0, StatusCode::NOT_FOUND);
    let r = app
        .http
        .post(app.url(&path))
        .json(&json!({"delta": 1, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let rows = app
        .scalar(
            "SELECT count(*) FROM stock_adjustments WHERE event_id = $1",
            id,
        )
        .await;
    assert_eq!(
        rows, 4,
        "applied +5, refused -13, applied -12 (once), applied +2"
    );
    app.drain(id).await;
    let report = app.assert_invariants(id).await;
    let i1 = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "I1 stock adjustments")
        .unwrap()
        .clone();
    assert!(
        i1["detail"]
            .as_str()
            .unwrap()
            .contains("initial 10 + applied adjustments -5 = stock_total 5"),
        "{i1}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adjustments_during_a_crowd_never_oversell() {
    let app = spawn_app().await;
    let id = app.open_sale(100, 10, 1).await.id;
    app.fund(1, 800, 10_000).await;
    let buyer = app.buyer();
    let crowd = tokio::spawn(async move {
        all(1..=800i64, |user| {
            let buyer = buyer.clone();
            async move { buyer.purchase(id, user, json!(1)).await.0 }
        })
        .await
    });
    let mut applied = 0;
    for round in 0..10 {
        let delta = if round % 2 == 0 { 20 } else { -15 };
        let (status, body) = adjust(&app, id, delta, None).await;
        match status {
            StatusCode::OK => applied += delta,
            StatusCode::CONFLICT => assert_eq!(body["error"], "insufficient_stock"),
            other => panic!("adjustment answered {other}: {body}"),
        }
    }
    let statuses = crowd.await.unwrap();
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count() as i64;
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::CONFLICT));
    let left = app.stock_left(id).await.unwrap();
    assert!(left >= 0);
    assert_eq!(
        accepted + left,
        100 + applied,
        "every unit sold or left, none twice"
    );
    app.drain(id).await;
    let total = app
        .scalar("SELECT stock_total FROM events WHERE id = $1", id)
        .await;
    assert_eq!(total, 100 + applied);
    app.assert_invariants(id).await;
    app.cleanup().await;
}

/// A crowd buys while the operator pauses, resumes and ends the sale: no
/// purchase is accepted (by Redis's clock) between the pause and the resume
/// nor after the end, and every request sent after the pause or the end
/// returned is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_end_during_a_crowd_accept_nothing_after_they_return() {
    let app = spawn_app().await;
    let id = app.open_sale(5_000, 10, 1).await.id;
    let users = 3_000i64;
    app.fund(1, users, 10_000).await;
    let next_user = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut shoppers = Vec::new();
    for _ in 0..32 {
        let (buyer, next_user, stop) = (app.buyer(), next_user.clone(), stop.clone());
        shoppers.push(tokio::spawn(async move {
            // (sent at, answered at, status, error code) per attempt.
            let mut seen = Vec::new();
            while !stop.is_cancelled() {
                let user = next_user.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if user > users {
                    break;
                }
                let sent = Utc::now();
                let (status, body) = buyer.purchase(id, user, json!(1)).await;
                seen.push((
                    sent,
                    Utc::now(),
                    status,
                    body["error"].as_str().map(str::to_owned),
                ));
            }
            seen
        }));
    }
    let accepted_so_far = || async {
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", id)
            .await
    };
    let wait_for = |n: i64| async move {
        for _ in 0..400 {
            if accepted_so_far().await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the crowd did not buy {n}");
    };
    wait_for(100).await;
    let (status, paused) = post(&app, &format!("/admin/events/{id}/pause")).await;
    assert_eq!(status, StatusCode::OK);
    let paused_returned = Utc::now();
    let paused_at = time(&paused["paused_at"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resume_sent = Utc::now();
    assert_eq!(
        post(&app, &format!("/admin/events/{id}/resume")).await.0,
        StatusCode::OK
    );
    let before = accepted_so_far().await;
    wait_for(before + 100).await;
    let (status, ended) = post(&app, &format!("/admin/events/{id}/end")).await;
    assert_eq!(status, StatusCode::OK);
    let end_returned = Utc::now();
    let ends_at = time(&ended["ends_at"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let mut attempts = Vec::new();
    for s in shoppers {
        attempts.extend(s.await.unwrap());
    }

    let mut refused_paused = 0;
    let mut refused_ended = 0;
    for (sent, answered, status, error) in &attempts {
        if *sent > paused_returned && *answered < resume_sent {
            assert_eq!(*status, StatusCode::CONFLICT, "sent while paused");
            assert_eq!(error.as_deref(), Some("sale_paused"));
            refused_paused += 1;
        }
        if *sent > end_returned {
            assert_eq!(*status, StatusCode::CONFLICT, "sent after the end returned");
            assert_eq!(error.as_deref(), Some("not_active"));
            refused_ended += 1;
        }
    }
    assert!(
        refused_paused > 0 && refused_ended > 0,
        "the crowd kept coming: {refused_paused} / {refused_ended}"
    );
    app.drain(id).await;
    // By Redis's clock (the order's acceptance time, in ms): nothing
    // accepted while paused, nothing after the end. The instant of the end
    // itself may hold orders taken just before the end script ran in that
    // millisecond (purchase.lua refuses from `ends_ms` on).
    let (in_pause, after_end): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE created_at > $2 AND created_at < $3),
                count(*) FILTER (WHERE created_at > $4)
         FROM orders WHERE event_id = $1",
    )
    .bind(id)
    .bind(paused_at)
    .bind(resume_sent)
    .bind(ends_at)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((in_pause, after_end), (0, 0));
    let accepted = attempts
        .iter()
        .filter(|(_, _, s, _)| *s == StatusCode::ACCEPTED)
        .count() as i64;
    assert_eq!(
        accepted,
        accepted_so_far().await,
        "every 202 persisted, no other order"
    );
    app.assert_invariants(id).await;
    app.cleanup().await;
}

/// A crash between an adjustment's Postgres row and its settlement (before
/// or after the Redis step) is finished by the reconciler, once; a Redis
/// that lost the sale is rebuilt with the adjusted total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_settles_adjustments_a_crash_left_pending() {
    let app = spawn_app().await;
    let id = app.open_sale(10, 100, 1).await.id;
    app.fund(1, 30, 10_000).await;
    assert_eq!(app.purchase(id, 1, json!(1)).await.0, StatusCode::ACCEPTED);
    app.drain(id).await;
    let pending_row = |delta: i64| {
        let db = app.db.clone();
        async move {
            let (adj,): (i64,) = sqlx::query_as(
                "INSERT INTO stock_adjustments (event_id, delta, reason, created_at)
                 VALUES ($1, $2, 'crash', now() - interval '1 minute') RETURNING id",
            )
            .bind(id)
            .bind(delta)
            .fetch_one(&db)
            .await
            .unwrap();
            adj
        }
    };
    // Killed after the row, before Redis.
    let before_redis = pending_row(4).await;
    // Killed after Redis applied it, before the commit.
    let after_redis = pending_row(-2).await;
    app.redis.adjust_stock(id, after_redis, -2).await.unwrap();
    assert_eq!(app.stock_left(id).await, Some(7));

    app.reconcile().await;
    // By this pass (or the background loop's first pass, if it ran meanwhile).
    let settled = app
        .scalar(
            "SELECT count(*) FROM reconcile_discrepancies WHERE event_id = $1 AND kind = 'pending_adjustment'",
            id,
        )
        .await;
    assert_eq!(settled, 2);
    assert_eq!(app.stock_left(id).await, Some(11), "9 + 4 - 2, the -2 once");
    let states: Vec<(String,)> =
        sqlx::query_as("SELECT state FROM stock_adjustments WHERE event_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![("applied".to_owned(),), ("applied".to_owned(),)]
    );
    let second = app.reconcile().await;
    assert_eq!(second["adjustments_settled"], 0);
    assert_eq!(app.stock_left(id).await, Some(11));
    app.assert_invariants(id).await;
    let _ = before_redis;

    // Redis loses the sale: the rebuild loads the adjusted total.
    app.lose_redis_state().await;
    app.reconcile().await;
    assert_eq!(app.stock_left(id).await, Some(11));
    app.assert_invariants(id).await;

    // A withdrawal Redis refused before the crash is refused, not retried.
    let refused = pending_row(-100).await;
    app.redis.adjust_stock(id, refused, -100).await.unwrap();
    app.reconcile().await;
    let (state, refusal): (String, Option<String>) =
        sqlx::query_as("SELECT state, refusal FROM stock_adjustments WHERE id = $1")
            .bind(refused)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), refusal.as_deref()),
        ("refused", Some("insufficient_stock"))
    );
    app.assert_invariants(id).await;
    app.cleanup().await;
}

/// Another engine process (its own catalog) refuses at once after a pause
/// or an end made through the first: the decision is in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_through_one_process_holds_on_another_at_once() {
    let app = spawn_app().await;
    let id = app.open_sale(10, 100, 1).await.id;
    app.fund(1, 10, 10_000).await;
    let other = app.second_engine().await;
    // Its catalog caches the running sale first.
    assert_eq!(
        other.buyer.purchase(id, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(&app, &format!("/admin/events/{id}/pause")).await.0,
        StatusCode::OK
    );
    let (status, body) = other.buyer.purchase(id, 2, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sale_paused"))
    );
    // Its event page follows within the definition refresh (1 s).
    let mut shown = Value::Null;
    for _ in 0..40 {
        shown = app
            .http
            .get(format!("{}/api/events/{id}", other.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if shown["status"] == "paused" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown["status"], "paused");
    assert_eq!(
        post(&app, &format!("/admin/events/{id}/end")).await.0,
        StatusCode::OK
    );
    let (status, body) = other.buyer.purchase(id, 3, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active"))
    );
    other.stop().await;
    app.drain(id).await;
    app.assert_invariants(id).await;
    app.cleanup().await;
}

/// A crash between an operator's Redis write and its commit leaves Redis's
/// sale parameters ahead of Postgres: the reconciler loads Postgres's back,
/// except a sale Redis holds more closed (an end or pause in flight), which
/// it leaves for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_puts_postgres_sale_parameters_back_into_redis() {
    let app = spawn_app().await;
    let id = app.open_sale(10, 100, 1).await.id;
    let event = seckill::db::events::get(&app.db, id)
        .await
        .unwrap()
        .unwrap();
    let truth = seckill::loading::sale_params(&event);
    let mut edited = truth;
    edited.price = 1;
    edited.per_user_limit = 5;
    app.redis.set_sale(id, edited).await.unwrap();
    app.reconcile().await;
    // Recorded by this pass (or by the background loop's first pass, if it
    // ran meanwhile).
    let recorded = app
        .scalar(
            "SELECT count(*) FROM reconcile_discrepancies WHERE event_id = $1 AND kind = 'sale_params_drift'",
            id,
        )
        .await;
    assert_eq!(recorded, 1);
    let loaded = app.redis.loaded_params(id).await.unwrap().unwrap();
    assert_eq!((loaded.price, loaded.per_user_limit), (100, 1));

    // Paused in Redis only: left alone by this pass (a pause in flight).
    app.redis.pause_sale(id, true).await.unwrap();
    app.reconcile().await;
    assert!(app.redis.loaded_params(id).await.unwrap().unwrap().paused);
    let (status, body) = app.purchase(id, 1, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sale_paused"))
    );
    app.cleanup().await;
}

/// A sale not preheated yet has its stock in Postgres only: an adjustment
/// changes `stock_total`, and the preheat loads the adjusted total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adjustment_before_the_preheat_is_loaded_by_it() {
    let app = spawn_app().await;
    let id = app
        .create_event(
            10,
            100,
            1,
            chrono::Duration::seconds(-1),
            chrono::Duration::hours(1),
        )
        .await
        .id;
    let (status, added) = adjust(&app, id, 5, None).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["event"]["stock_total"], 15);
    let (status, body) = adjust(&app, id, -16, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_stock"))
    );
    assert_eq!(app.stock_left(id).await, None, "nothing in Redis yet");
    app.preheat(id).await;
    assert_eq!(app.stock_left(id).await, Some(15));
    app.assert_invariants(id).await;
    app.cleanup().await;
}
