//! Exactness under retries and Redis loss: an Idempotency-Key buys once
//! whatever Redis forgets, a retry gets the answer that matches what is
//! persisted, numbers cross Lua exactly, a preheat cannot reset stock under
//! an open batch, and a shopper cannot grow Redis without bound.

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use seckill::{
    redis::{KeyClaim, KeyState, FAILED_KEPT_PER_SHOPPER},
    {intent::Intent, writer::persist::persist_batch},
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{all, spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};

fn one() -> Value {
    json!({"quantity": 1})
}

async fn wallet(app: &TestApp, user: i64) -> (i64, i64) {
    let w = app.admin_get(&format!("/admin/wallets/{user}")).await;
    (
        w["balance"].as_i64().unwrap(),
        w["version"].as_i64().unwrap(),
    )
}

async fn preheat_status(app: &TestApp, id: i64, query: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url(&format!("/admin/events/{id}/preheat{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_bought_is_honoured_after_redis_loses_everything() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 2).await;
    app.fund(1, 1, 10_000).await;
    let (status, first) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    app.drain(sale.id).await;

    app.lose_redis_state().await;
    // Redis no longer knows the sale or the key. Until the sale is rebuilt
    // nobody can tell whether this key's order still holds stock: the retry
    // is told to come back, not "no" (its order exists).
    let (status, body) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{body}"
    );
    app.reconcile().await;
    let (status, again) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["order_no"], first["order_no"], "the same order");
    let (status, body) = app
        .purchase_with(sale.id, 1, json!({"quantity": 2}), Some("K"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );

    app.drain(sale.id).await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", sale.id)
            .await,
        1,
        "one key, one order"
    );
    assert_eq!(wallet(&app, 1).await, (10_000 - 100, 1), "one charge");
    assert_eq!(app.stock_left(sale.id).await, Some(9));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_order_was_still_queued_when_redis_lost_it_buys_once() {
    // Writers hold their batch open: the order is acknowledged, not persisted.
    let mut app = spawn_app_with(&[
        ("SECKILL_BATCH_LINGER_MS", "30000"),
        ("SECKILL_BATCH_MAX", "100000"),
        ("SECKILL_WRITERS", "1"),
    ])
    .await;
    let sale = app.open_sale(10, 100, 2).await;
    app.fund(1, 1, 10_000).await;
    let (status, first) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    app.lose_redis_state().await;
    let (status, rebuilt) = preheat_status(&app, sale.id, "?force=true").await;
    assert_eq!(status, StatusCode::OK, "{rebuilt}");
    assert_eq!(rebuilt["stock_left"], 10, "nothing persisted yet");
    // The retry finds the key in Postgres and resumes its order_no: the
    // rebuilt Redis takes its stock once, and the queued copy is that order.
    let (status, again) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["order_no"], first["order_no"]);

    app.stop()
        .await
        .expect("clean shutdown flushes the writers");
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        1
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1",
            sale.id
        )
        .await,
        1,
        "charged once"
    );
    assert_eq!(app.stock_left(sale.id).await, Some(9));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_claims_are_atomic_and_a_resent_claim_is_its_own() {
    let app = spawn_app().await;
    let redis = &app.redis;
    let (ttl, stale) = (60_000, 15_000);
    let mine = Uuid::now_v7();
    assert_eq!(
        redis
            .claim_key(1, "k", "9:1", mine, ttl, stale)
            .await
            .unwrap(),
        KeyClaim::New(mine)
    );
    // The Redis client re-sends the same claim after a dropped connection.
    assert_eq!(
        redis
            .claim_key(1, "k", "9:1", mine, ttl, stale)
            .await
            .unwrap(),
        KeyClaim::New(mine),
        "a re-sent claim finds its own record, not 'in progress'"
    );
    assert_eq!(
        redis
            .claim_key(1, "k", "9:1", Uuid::now_v7(), ttl, stale)
            .await
            .unwrap(),
        KeyClaim::InProgress
    );
    assert_eq!(
        redis
            .claim_key(1, "k", "9:2", Uuid::now_v7(), ttl, stale)
            .await
            .unwrap(),
        KeyClaim::Mismatch
    );
    // An attempt past the stale age is resumed with its order_no.
    assert_eq!(
        redis
            .claim_key(1, "k", "9:1", Uuid::now_v7(), ttl, 0)
            .await
            .unwrap(),
        KeyClaim::Resume(mine)
    );
    redis
        .put_key(
            1,
            "k",
            "9:1",
            mine,
            ttl,
            KeyState::Done {
                status: 202,
                body: "{\"x\":1}",
            },
        )
        .await
        .unwrap();
    assert_eq!(
        redis
            .claim_key(1, "k", "9:1", Uuid::now_v7(), ttl, stale)
            .await
            .unwrap(),
        KeyClaim::Done {
            status: 202,
            body: "{\"x\":1}".into()
        }
    );

    // Many claims of one fresh key at once: exactly one takes it.
    let redis = app.redis.clone();
    let claims = all(0..64, |_| {
        let redis = redis.clone();
        async move {
            redis
                .claim_key(2, "race", "9:1", Uuid::now_v7(), ttl, stale)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(
        claims
            .iter()
            .filter(|c| matches!(c, KeyClaim::New(_)))
            .count(),
        1,
        "{claims:?}"
    );
    assert!(claims
        .iter()
        .all(|c| matches!(c, KeyClaim::New(_) | KeyClaim::InProgress)));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_amount_crosses_lua_exactly_and_is_replayed() {
    // Writers hold their batch, so only the ledger entry can tell the
    // reconciler about this purchase.
    let app = spawn_app_with(&[
        ("SECKILL_BATCH_LINGER_MS", "30000"),
        ("SECKILL_BATCH_MAX", "100000"),
        ("SECKILL_WRITERS", "1"),
        ("SECKILL_RECONCILE_GRACE_MS", "100"),
    ])
    .await;
    let price = 1_000_000_000_000; // the largest price the API accepts
    let limit = 1_000; // the largest per-user limit
    let start = Utc::now() - chrono::Duration::seconds(1);
    let r = app
        .admin_post(
            "/admin/events",
            json!({"name": "too big", "price": price, "stock": 10_000, "per_user_limit": limit,
                   "starts_at": start, "ends_at": start + chrono::Duration::hours(1)}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "price × stock beyond 2^53 is refused"
    );
    let sale = app.open_sale(limit, price, limit).await;
    // The largest balance the API accepts pays exactly this order.
    app.fund(1, 1, price * limit).await;
    let (status, receipt) = app.purchase(sale.id, 1, json!(limit)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    let amount = price * limit;
    assert_eq!(receipt["amount"], amount);
    let order_no = receipt["order_no"].as_str().unwrap().to_string();

    // Pending, read back from the ledger entry Lua wrote.
    let (status, order) = app.order(1, &order_no).await;
    assert_eq!(status, StatusCode::OK, "the pending order is visible");
    assert_eq!(
        (order["status"].as_str(), order["amount"].as_i64()),
        (Some("pending"), Some(amount))
    );

    // The reconciler replays it from the ledger (the writers still hold it).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let report = app.reconcile().await;
    assert_eq!(report["intents_replayed"], 1, "{report:#}");
    let (_, order) = app.order(1, &order_no).await;
    assert_eq!(
        (order["status"].as_str(), order["amount"].as_i64()),
        (Some("confirmed"), Some(amount))
    );
    assert_eq!(wallet(&app, 1).await, (0, 1));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

/// The first attempt under the key ran the purchase script, but its answer
/// never reached the shopper (a timeout) and the record says "retry".
async fn unanswered_attempt(app: &TestApp, event: i64, user: i64, key: &str, bought: bool) -> Uuid {
    let order_no = Uuid::now_v7();
    app.redis
        .put_key(
            user,
            key,
            &format!("{event}:1"),
            order_no,
            3_600_000,
            KeyState::Retry,
        )
        .await
        .unwrap();
    if bought {
        let outcome = app.redis.purchase(event, user, 1, order_no).await.unwrap();
        assert!(
            matches!(outcome, seckill::redis::PurchaseOutcome::Accepted { .. }),
            "{outcome:?}"
        );
    }
    order_no
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_attempt_is_not_refused_by_the_local_sold_out_flag() {
    let app = spawn_app().await;
    let sale = app.open_sale(2, 100, 1).await;
    app.fund(1, 3, 1_000).await;
    let first = unanswered_attempt(&app, sale.id, 1, "K", true).await;
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    // Sold out, and this process now knows it without asking Redis.
    assert_eq!(
        app.purchase(sale.id, 3, json!(1)).await.1["error"],
        "sold_out"
    );

    let (status, body) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["order_no"],
        json!(first),
        "the order that will be persisted"
    );
    app.drain(sale.id).await;
    assert_eq!(wallet(&app, 1).await, (900, 1));
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        2
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_attempt_after_the_sale_ended_still_gets_its_202() {
    let app = spawn_app().await;
    let sale = app
        .create_event(
            1,
            100,
            1,
            chrono::Duration::seconds(-1),
            chrono::Duration::seconds(3),
        )
        .await;
    app.preheat(sale.id).await;
    app.fund(1, 2, 1_000).await;
    let first = unanswered_attempt(&app, sale.id, 1, "K", true).await;
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.1["error"],
        "sold_out"
    );
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.1["error"],
        "not_active"
    );

    let (status, body) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["order_no"], json!(first));
    app.drain(sale.id).await;
    assert_eq!(wallet(&app, 1).await, (900, 1));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_attempt_redis_refuses_is_void_so_no_late_copy_confirms_it() {
    let app = spawn_app().await;
    let sale = app.open_sale(1, 100, 1).await;
    app.fund(1, 2, 1_000).await;
    // The first attempt never reached the purchase script.
    let first = unanswered_attempt(&app, sale.id, 1, "K", false).await;
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.0,
        StatusCode::ACCEPTED
    );

    let (status, body) = app.purchase_with(sale.id, 1, one(), Some("K")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    // A copy of that attempt reaching a writer later (a Redis that lost it
    // had accepted it) finds the order void and charges nothing.
    let late = Intent {
        buckets: 1,
        order_no: first,
        event_id: sale.id,
        user_id: 1,
        quantity: 1,
        amount: 100,
        accepted_at: Utc::now(),
    };
    let result = persist_batch(&app.db, &[late], None).await.unwrap();
    assert!(result.confirmed.is_empty(), "{result:?}");
    assert_eq!(result.already.len(), 1);
    assert_eq!(result.already[0].1.as_deref(), Some("not_accepted"));
    assert_eq!(wallet(&app, 1).await, (1_000, 0), "never charged");
    // The void was an order state: its one event, written with it.
    let events: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT kind, payload->>'failure_reason' FROM outbox_events WHERE order_no = $1",
    )
    .bind(first)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        events,
        vec![("order.failed".to_owned(), Some("not_accepted".to_owned()))]
    );
    app.drain(sale.id).await;
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preheat_waits_for_open_batches_and_never_resets_sold_stock() {
    // One writer: a batch held open mid-transaction, the rest queued.
    let app = spawn_app_with(&[("SECKILL_WRITERS", "1")]).await;
    let sale = app.open_sale(10, 100, 1).await;
    app.fund(1, 20, 1_000).await;
    // Shopper 1's wallet row is locked: the writer's batch blocks on its debit,
    // holding FOR KEY SHARE on the event row.
    let mut hold = app.db.begin().await.unwrap();
    sqlx::query("SELECT balance FROM wallets WHERE user_id = 1 FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    assert_eq!(
        app.purchase(sale.id, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for user in 2..=10 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.lose_redis_state().await;

    // An operator preheats again without force while the batch is open.
    let preheat = {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/admin/events/{}/preheat", sale.id)),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    hold.commit().await.unwrap();
    let (status, body) = preheat.await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("has_orders")),
        "the preheat saw the batch commit: {body}"
    );
    let (status, rebuilt) = preheat_status(&app, sale.id, "?force=true").await;
    assert_eq!(status, StatusCode::OK, "{rebuilt}");

    let buyer = app.buyer();
    let late = all(11..=20i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await }
    })
    .await;
    assert!(
        late.iter()
            .all(|(s, b)| *s == StatusCode::CONFLICT && b["error"] == "sold_out"),
        "the ten units are not sold again: {late:?}"
    );
    app.drain(sale.id).await;
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        10
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_who_cannot_pay_cannot_grow_redis_without_bound() {
    let app = spawn_app().await;
    let sale = app.open_sale(5, 100, 1).await;
    // Shopper 1 has no wallet: every order fails and its unit comes back.
    for _ in 0..(FAILED_KEPT_PER_SHOPPER + 12) {
        assert_eq!(
            app.purchase(sale.id, 1, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
        app.drain(sale.id).await;
    }
    let list = app.redis.buyer_orders(sale.id, 1).await.unwrap();
    assert_eq!(list.len(), FAILED_KEPT_PER_SHOPPER, "{list:?}");
    assert!(list.iter().all(|(_, failed)| *failed));
    let newest: Vec<Uuid> = sqlx::query_as::<_, (Uuid,)>(
        "SELECT order_no FROM orders WHERE user_id = 1 ORDER BY created_at DESC LIMIT $1",
    )
    .bind(FAILED_KEPT_PER_SHOPPER as i64)
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(o,)| o)
    .collect();
    assert!(
        list.iter().all(|(o, _)| newest.contains(o)),
        "the newest are kept"
    );
    assert_eq!(app.stock_left(sale.id).await, Some(5));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}
