//! Cancel and refund exactly once, and the wallet ledger: every route with
//! bad input, the double click, a cancel racing the writer, the reconciler
//! and a second engine process, and the invariants after each.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use seckill::redis::{RefundedOrder, StockReturn};

use crate::helpers::{all, spawn_app, Sale, TestApp, ADMIN_TOKEN};

fn refunded_order(order_no: &str, user_id: i64) -> RefundedOrder {
    RefundedOrder {
        order_no: order_no.parse().unwrap(),
        user_id,
        quantity: 1,
    }
}

/// A sale open now, preheated, whose shoppers may cancel for `window` seconds.
async fn cancellable_sale(
    app: &TestApp,
    stock: i64,
    price: i64,
    limit: i64,
    window: Option<i64>,
) -> Sale {
    let starts_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    let r = app
        .admin_post(
            "/admin/events",
            json!({"name": "refundable", "price": price, "stock": stock, "per_user_limit": limit,
                   "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1),
                   "cancel_window_seconds": window}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["cancel_window_seconds"], json!(window));
    let sale = Sale {
        id: body["id"].as_i64().unwrap(),
        price,
    };
    app.preheat(sale.id).await;
    sale
}

async fn cancel_at(app: &TestApp, base: &str, user: i64, order_no: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{base}/api/orders/{order_no}/cancel"))
        .bearer_auth(app.token(user))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, user: i64, order_no: &str) -> (StatusCode, Value) {
    cancel_at(app, &app.base, user, order_no).await
}

async fn refund(app: &TestApp, order_no: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .admin_post(&format!("/admin/orders/{order_no}/refund"), body)
        .await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Buys one unit and waits until the order is persisted; its order_no.
async fn bought(app: &TestApp, event: i64, user: i64) -> String {
    let (status, body) = app.purchase(event, user, json!(1)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.drain(event).await;
    body["order_no"].as_str().unwrap().to_string()
}

async fn balance(app: &TestApp, user: i64) -> i64 {
    app.admin_get(&format!("/admin/wallets/{user}")).await["balance"]
        .as_i64()
        .unwrap()
}

async fn refunds_of(app: &TestApp, event: i64) -> i64 {
    app.scalar("SELECT count(*) FROM refunds WHERE event_id = $1", event)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_gives_back_money_stock_and_allowance_and_a_second_cancel_answers_the_same() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 3, 250, 1, Some(600)).await;
    app.fund(1, 2, 1_000).await;
    let order_no = bought(&app, sale.id, 1).await;
    assert_eq!(balance(&app, 1).await, 750);
    assert_eq!(app.stock_left(sale.id).await, Some(2));
    // The limit of 1 is used up.
    let (status, _) = app.purchase(sale.id, 1, json!(1)).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, first) = cancel(&app, 1, &order_no).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "cancelled");
    assert_eq!(first["refund"]["amount"], 250);
    assert_eq!(first["refund"]["kind"], "cancel");
    assert_eq!(balance(&app, 1).await, 1_000);
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(3),
        "the unit is back on sale"
    );
    let (status, order) = app.order(1, &order_no).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["status"], "cancelled");

    let (status, second) = cancel(&app, 1, &order_no).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second, first, "a second cancel answers the same refund");
    // An operator's refund of it now answers the same refund too.
    let (status, third) = refund(&app, &order_no, json!({"reason": "late"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(third, first);
    assert_eq!(refunds_of(&app, sale.id).await, 1);
    assert_eq!(app.stock_left(sale.id).await, Some(3), "returned once");

    // The allowance is back: the shopper buys again, and so does another.
    let again = bought(&app, sale.id, 1).await;
    assert_ne!(again, order_no);
    bought(&app, sale.id, 2).await;
    assert_eq!(app.stock_left(sale.id).await, Some(1));
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM payments WHERE event_id = $1 AND state = 'refunded'",
            sale.id
        )
        .await,
        1
    );

    // The ledger shows seed, purchase, refund, purchase, and sums to the balance.
    let ledger = app.admin_get("/admin/wallets/1/ledger").await;
    let kinds: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["seed", "purchase", "refund", "purchase"]);
    let sum: i64 = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delta"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, balance(&app, 1).await);
    assert_eq!(ledger["entries"][2]["order_no"], json!(order_no));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_refund_refuse_what_they_must() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 10, 100, 2, Some(1)).await;
    let never = cancellable_sale(&app, 10, 100, 2, None).await;
    app.fund(1, 2, 1_000).await;
    let order_no = bought(&app, sale.id, 1).await;
    let no_cancel = bought(&app, never.id, 1).await;

    // No token; a malformed or unknown order_no; another shopper's order.
    let r = app
        .http
        .post(app.url(&format!("/api/orders/{order_no}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    for (user, id) in [
        (1, "not-a-uuid".to_string()),
        (1, Uuid::new_v4().to_string()),
        (2, order_no.clone()),
    ] {
        let (status, body) = cancel(&app, user, &id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["error"], "not_found");
    }
    // A sale without cancellation.
    let (status, body) = cancel(&app, 1, &no_cancel).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "cancel_window_closed");
    // Past the window (1 s).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = cancel(&app, 1, &order_no).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "cancel_window_closed");
    assert_eq!(refunds_of(&app, sale.id).await, 0);

    // The operator's refund: a reason is required, a shopper token is 403.
    let (status, body) = refund(&app, &order_no, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = refund(&app, &order_no, json!({"reason": "  "})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .http
        .post(app.url(&format!("/admin/orders/{order_no}/refund")))
        .bearer_auth(app.token(1))
        .json(&json!({"reason": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, _) = refund(&app, &Uuid::new_v4().to_string(), json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Past the shopper's window, an operator still refunds.
    let (status, body) = refund(&app, &order_no, json!({"reason": "damaged on arrival"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "refunded");
    assert_eq!(body["refund"]["reason"], "damaged on arrival");

    // A failed order (no wallet) was never charged: nothing to refund.
    let (status, body) = app.purchase(sale.id, 77, json!(1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.drain(sale.id).await;
    let failed = body["order_no"].as_str().unwrap();
    let (_, order) = app.order(77, failed).await;
    assert_eq!(order["status"], "failed");
    let (status, body) = refund(&app, failed, json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "order_failed");

    // Creating an event with a bad window.
    let r = app
        .admin_post(
            "/admin/events",
            json!({"name": "x", "price": 1, "stock": 1, "per_user_limit": 1,
                   "starts_at": chrono::Utc::now(), "ends_at": chrono::Utc::now() + chrono::Duration::hours(1),
                   "cancel_window_seconds": 0}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.assert_invariants(sale.id).await;
    app.assert_invariants(never.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_double_click_makes_one_refund_and_returns_the_unit_once() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 5, 100, 1, Some(600)).await;
    app.fund(1, 3, 1_000).await;
    let order_no = bought(&app, sale.id, 1).await;
    bought(&app, sale.id, 2).await;
    let answers = all(0..12, |i| {
        let http = app.http.clone();
        let url = if i % 3 == 0 {
            app.url(&format!("/admin/orders/{order_no}/refund"))
        } else {
            app.url(&format!("/api/orders/{order_no}/cancel"))
        };
        let token = if i % 3 == 0 {
            ADMIN_TOKEN.to_string()
        } else {
            app.token(1)
        };
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"reason": "double click"}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    })
    .await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["refund"], answers[0].1["refund"], "one refund for all");
    }
    assert_eq!(refunds_of(&app, sale.id).await, 1);
    assert_eq!(balance(&app, 1).await, 1_000);
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(4),
        "5 - 2 bought + 1 returned"
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM wallet_ledger WHERE kind = 'refund' AND user_id = 1 AND $1 = $1",
            0
        )
        .await,
        1
    );
    // Downstream systems hear of it once, after its confirmation, through
    // the outbox written in the refund's transaction.
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM outbox_events WHERE order_no = $1::uuid ORDER BY id")
            .bind(&order_no)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(
        kinds.len() == 2
            && kinds[0] == "order.confirmed"
            && ["order.cancelled", "order.refunded"].contains(&kinds[1].as_str()),
        "{kinds:?}"
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_order_is_refused_and_cancels_once_persisted() {
    let app = spawn_app_with_grace().await;
    let sale = cancellable_sale(&app, 5, 100, 1, Some(600)).await;
    app.fund(1, 1, 1_000).await;
    // Accepted by Redis with no writer told: pending until the reconciler
    // persists it, like an intent whose writer is slow.
    let order_no = Uuid::new_v4();
    app.redis
        .purchase(sale.id, 1, 1, order_no)
        .await
        .expect("purchase script");
    let (status, body) = cancel(&app, 1, &order_no.to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "order_pending");
    let (status, _) = cancel(&app, 2, &order_no.to_string()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "someone else's pending order"
    );
    let (status, body) = refund(&app, &order_no.to_string(), json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "order_pending");
    assert_eq!(refunds_of(&app, sale.id).await, 0);
    assert_eq!(app.stock_left(sale.id).await, Some(4), "nothing returned");

    tokio::time::sleep(Duration::from_millis(150)).await;
    app.reconcile().await;
    app.drain(sale.id).await;
    let (status, body) = cancel(&app, 1, &order_no.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.stock_left(sale.id).await, Some(5));
    assert_eq!(balance(&app, 1).await, 1_000);
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

async fn spawn_app_with_grace() -> TestApp {
    crate::helpers::spawn_app_with(&[("SECKILL_RECONCILE_GRACE_MS", "100")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_whose_units_a_crash_left_behind_is_finished_by_the_reconciler_once() {
    let app = spawn_app_with_grace().await;
    let sale = cancellable_sale(&app, 4, 100, 2, Some(600)).await;
    app.fund(1, 2, 1_000).await;
    let first = bought(&app, sale.id, 1).await;
    let second = bought(&app, sale.id, 2).await;
    // The process died between the commit and refund.lua: Postgres has the
    // refund, Redis still holds the unit.
    let mut tx = app.db.begin().await.unwrap();
    crash_after_commit(&mut tx, &first).await;
    tx.commit().await.unwrap();
    assert_eq!(app.stock_left(sale.id).await, Some(2));
    let report = app.assert_invariants(sale.id).await;
    assert_eq!(report["ok"], true, "a refund in flight is no drift");

    // The reconciler and a cancel of the same order race to finish it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (reconciled, (status, _)) = tokio::join!(app.reconcile(), cancel(&app, 1, &first));
    assert_eq!(status, StatusCode::OK);
    let _ = reconciled;
    app.reconcile().await;
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(3),
        "the unit came back once"
    );
    let replay = app
        .redis
        .return_refunded(sale.id, &[refunded_order(&first, 1)])
        .await
        .unwrap();
    assert_eq!(replay, [StockReturn::AlreadyReturned]);
    assert_eq!(app.stock_left(sale.id).await, Some(3));
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM refunds WHERE event_id = $1 AND stock_returned",
            sale.id
        )
        .await,
        1
    );
    // And a normal cancel next to it.
    let (status, _) = cancel(&app, 2, &second).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.stock_left(sale.id).await, Some(4));
    let report = app.reconcile().await;
    assert_eq!(report["repairs"], 0, "nothing drifted: {report}");
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

/// What the refund transaction writes, by hand (the same rows, the same
/// order), and no refund.lua after it: a kill -9 right after the commit.
async fn crash_after_commit(tx: &mut sqlx::PgConnection, order_no: &str) {
    let order_no: Uuid = order_no.parse().unwrap();
    let (event_id, user_id, quantity, amount): (i64, i64, i32, i64) = sqlx::query_as(
        "SELECT event_id, user_id, quantity, amount FROM orders WHERE order_no = $1 FOR UPDATE",
    )
    .bind(order_no)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    for sql in [
        "UPDATE wallets SET balance = balance + $4, version = version + 1 WHERE user_id = $3 AND $1::uuid IS NOT NULL AND $2::int8 IS NOT NULL AND $5::int4 IS NOT NULL",
        "INSERT INTO wallet_ledger (user_id, delta, kind, reason, order_no) SELECT $3, $4, 'refund', 'crash test', $1 WHERE $2::int8 IS NOT NULL AND $5::int4 IS NOT NULL",
        "INSERT INTO refunds (order_no, event_id, user_id, quantity, amount, kind, reason) VALUES ($1, $2, $3, $5, $4, 'cancel', 'crash test')",
        "UPDATE orders SET status = 'cancelled' WHERE order_no = $1 AND $2::int8 IS NOT NULL AND $3::int8 IS NOT NULL AND $4::int8 IS NOT NULL AND $5::int4 IS NOT NULL",
        "UPDATE payments SET state = 'refunded' WHERE order_no = $1 AND $2::int8 IS NOT NULL AND $3::int8 IS NOT NULL AND $4::int8 IS NOT NULL AND $5::int4 IS NOT NULL",
        "UPDATE events SET sold = sold - $5 WHERE id = $2 AND $1::uuid IS NOT NULL AND $3::int8 IS NOT NULL AND $4::int8 IS NOT NULL",
    ] {
        sqlx::query(sql)
            .bind(order_no)
            .bind(event_id)
            .bind(user_id)
            .bind(amount)
            .bind(quantity)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engine_processes_make_one_refund_and_both_sell_the_unit_again() {
    let app = spawn_app().await;
    let mut peer = app.spawn_peer().await;
    let sale = cancellable_sale(&app, 2, 100, 1, Some(600)).await;
    app.fund(1, 4, 1_000).await;
    let order_no = bought(&app, sale.id, 1).await;
    bought(&app, sale.id, 2).await;
    // Both engines know the sale is sold out.
    let (status, _) = app.purchase(sale.id, 3, json!(1)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let peer_buy = |user: i64| {
        let http = app.http.clone();
        let url = format!("{}/api/events/{}/purchase", peer.base, sale.id);
        let token = app.token(user);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(peer_buy(3).await, StatusCode::CONFLICT);

    let (a, b) = tokio::join!(
        cancel_at(&app, &app.base, 1, &order_no),
        cancel_at(&app, &peer.base, 1, &order_no)
    );
    assert_eq!(a.0, StatusCode::OK);
    assert_eq!(b.0, StatusCode::OK);
    assert_eq!(a.1, b.1, "the same refund from both engines");
    assert_eq!(refunds_of(&app, sale.id).await, 1);
    assert_eq!(app.stock_left(sale.id).await, Some(1), "returned once");
    // The peer heard "stock back" and sells the returned unit.
    let mut status = StatusCode::CONFLICT;
    for _ in 0..40 {
        status = peer_buy(4).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, StatusCode::ACCEPTED);
    app.drain(sale.id).await;
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    peer.stop().await;
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_while_the_sale_sells_resell_the_units_and_never_oversell() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 40, 100, 1, Some(600)).await;
    app.fund(1, 200, 1_000).await;
    let buyer = app.buyer();
    let first = all(1..=40i64, |u| {
        let buyer = buyer.clone();
        async move { (u, buyer.purchase(sale.id, u, json!(1)).await) }
    })
    .await;
    app.drain(sale.id).await;
    let orders: Vec<(i64, String)> = first
        .into_iter()
        .filter(|(_, (s, _))| *s == StatusCode::ACCEPTED)
        .map(|(u, (_, b))| (u, b["order_no"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(orders.len(), 40);
    // Half cancel while 160 others try to buy.
    let cancels = orders.iter().take(20).cloned().collect::<Vec<_>>();
    let (cancelled, bought) = tokio::join!(
        all(cancels, |(u, o)| {
            let http = app.http.clone();
            let url = app.url(&format!("/api/orders/{o}/cancel"));
            let token = app.token(u);
            async move {
                http.post(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        }),
        all(41..=200i64, |u| {
            let buyer = buyer.clone();
            async move { buyer.purchase(sale.id, u, json!(1)).await.0 }
        })
    );
    assert!(cancelled.iter().all(|s| *s == StatusCode::OK));
    app.drain(sale.id).await;
    let resold = bought
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!(resold <= 20, "at most the returned units resold: {resold}");
    let left = app.stock_left(sale.id).await.unwrap();
    assert_eq!(
        resold as i64 + left,
        20,
        "every returned unit resold or left"
    );
    let confirmed = app
        .scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id,
        )
        .await;
    assert_eq!(confirmed, 20 + resold as i64);
    assert!(confirmed <= 40, "nothing oversold");
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_rebuilt_with_refunded_units_back_and_not_returned_twice() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 3, 100, 1, Some(600)).await;
    app.fund(1, 3, 1_000).await;
    let a = bought(&app, sale.id, 1).await;
    let b = bought(&app, sale.id, 2).await;
    let (status, _) = cancel(&app, 1, &a).await;
    assert_eq!(status, StatusCode::OK);
    // b's refund commits, then Redis is lost before refund.lua.
    let mut tx = app.db.begin().await.unwrap();
    crash_after_commit(&mut tx, &b).await;
    tx.commit().await.unwrap();
    app.lose_redis_state().await;
    app.reconcile().await;
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(3),
        "both refunded units in stock"
    );
    // A late refund.lua of b (the interrupted request's, say) is a no-op.
    let late = app
        .redis
        .return_refunded(sale.id, &[refunded_order(&b, 2)])
        .await
        .unwrap();
    assert_eq!(late, [StockReturn::AlreadyReturned]);
    assert_eq!(app.stock_left(sale.id).await, Some(3));
    let (status, _) = cancel(&app, 2, &b).await;
    assert_eq!(status, StatusCode::OK);
    app.reconcile().await;
    assert_eq!(app.stock_left(sale.id).await, Some(3));
    // The rebuilt sale sells them, allowance restored.
    bought(&app, sale.id, 1).await;
    bought(&app, sale.id, 2).await;
    assert_eq!(app.stock_left(sale.id).await, Some(1));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_credits_and_corrections_are_ledger_rows_that_sum_to_the_balance() {
    let app = spawn_app().await;
    app.fund(1, 3, 500).await;
    // Credit: 200 with a reason.
    let r = app
        .admin_post(
            "/admin/wallets/1/credit",
            json!({"amount": 200, "reason": "goodwill"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["wallet"]["balance"], 700);
    assert_eq!(body["entry"]["kind"], "credit");
    assert_eq!(body["entry"]["reason"], "goodwill");
    // Bad credits.
    for bad in [
        json!({"amount": 0, "reason": "x"}),
        json!({"amount": -5, "reason": "x"}),
        json!({"amount": 5, "reason": ""}),
        json!({"amount": 5}),
        json!({"amount": 5, "reason": "x", "extra": 1}),
    ] {
        let r = app.admin_post("/admin/wallets/1/credit", bad.clone()).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let r = app
        .admin_post(
            "/admin/wallets/999/credit",
            json!({"amount": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Setting a balance writes the correcting row.
    let r = app
        .http
        .put(app.url("/admin/wallets/1"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"balance": 650}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Concurrent credits: every one lands, each with its row.
    let results = all(0..20, |_| {
        let http = app.http.clone();
        let url = app.url("/admin/wallets/2/credit");
        async move {
            http.post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"amount": 10, "reason": "storm"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    })
    .await;
    assert!(results.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(balance(&app, 2).await, 700);
    // Re-seeding writes each difference.
    app.fund(3, 1, 800).await;

    // Paged ledger of wallet 1: seed 500, credit 200, correction -50.
    let page = app.admin_get("/admin/wallets/1/ledger?limit=2").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_i64().unwrap();
    let rest = app
        .admin_get(&format!("/admin/wallets/1/ledger?limit=2&after={after}"))
        .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["entries"][0]["kind"], "correction");
    assert_eq!(rest["entries"][0]["delta"], -50);
    assert_eq!(rest["next_after"], Value::Null);
    let r = app
        .get_as("/admin/wallets/1/ledger?limit=0", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .get_as("/admin/wallets/999/ledger", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app.get_as("/admin/wallets/1/ledger", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let off: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM wallets w WHERE balance <> (SELECT coalesce(sum(delta), 0) FROM wallet_ledger l WHERE l.user_id = w.user_id)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(off.0, 0, "every wallet's ledger sums to its balance");
    // The ledger is append-only.
    let edit = sqlx::query("UPDATE wallet_ledger SET delta = 0 WHERE user_id = 1")
        .execute(&app.db)
        .await;
    assert!(edit.is_err());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_lua_waits_for_the_ack_and_leaves_an_unloaded_sale_alone() {
    let app = spawn_app().await;
    let sale = cancellable_sale(&app, 3, 100, 1, Some(600)).await;
    // An intent still in the ledger (committed or not, not acked): not now.
    let order_no = Uuid::new_v4();
    app.redis.purchase(sale.id, 7, 1, order_no).await.unwrap();
    let state_before = app.redis.sale_state(sale.id).await.unwrap();
    let answer = app
        .redis
        .return_refunded(sale.id, &[refunded_order(&order_no.to_string(), 7)])
        .await
        .unwrap();
    assert_eq!(answer, [StockReturn::StillPending]);
    let state_after = app.redis.sale_state(sale.id).await.unwrap();
    assert_eq!(
        (
            state_after.stock_left,
            state_after.held,
            state_after.pending
        ),
        (
            state_before.stock_left,
            state_before.held,
            state_before.pending
        ),
        "nothing moved"
    );
    // Acked: returned once, the counters kept right.
    app.redis.ack(sale.id, &[order_no]).await.unwrap();
    let answer = app
        .redis
        .return_refunded(sale.id, &[refunded_order(&order_no.to_string(), 7)])
        .await
        .unwrap();
    assert_eq!(answer, [StockReturn::Returned]);
    let state = app.redis.sale_state(sale.id).await.unwrap();
    assert_eq!(
        (state.stock_left, state.held, state.pending),
        (Some(3), Some(0), 0)
    );
    let orders = app.redis.buyer_orders(sale.id, 7).await.unwrap();
    assert_eq!(orders, [(order_no, true)], "marked as holding nothing");
    // A sale Redis does not hold: nothing to return to.
    let answer = app
        .redis
        .return_refunded(sale.id + 1_000, &[refunded_order(&order_no.to_string(), 7)])
        .await
        .unwrap();
    assert_eq!(answer, [StockReturn::NotLoaded]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_opens_every_existing_wallets_ledger_with_its_balance() {
    use sqlx::{Connection, Executor};
    let admin_url = crate::helpers::admin_db_url();
    let name = format!("seckill_ledger_mig_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let mut db = sqlx::PgConnection::connect(&format!("{base}/{name}"))
        .await
        .unwrap();
    // The schema before the ledger, with wallets that have bought.
    let mut files: Vec<_> = std::fs::read_dir("migrations")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (ledger, before): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("20261123000002")
    });
    for path in before
        .iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().as_ref() < "20261123000002")
    {
        db.execute(std::fs::read_to_string(path).unwrap().as_str())
            .await
            .unwrap();
    }
    db.execute(
        "INSERT INTO wallets (user_id, balance, version) VALUES (1, 700, 3), (2, 0, 1), (3, 1000, 0)",
    )
    .await
    .unwrap();
    db.execute(std::fs::read_to_string(&ledger[0]).unwrap().as_str())
        .await
        .unwrap();
    let off: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE w.balance <> coalesce(l.total, 0)), count(l.total)
         FROM wallets w LEFT JOIN (SELECT user_id, sum(delta)::int8 AS total, count(*) AS n FROM wallet_ledger GROUP BY user_id) l USING (user_id)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        off,
        (0, 2),
        "every ledger sums to its balance; a zero balance needs no row"
    );
    let _ = db.close().await;
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
}
