//! The purchase path under concurrency: exact stock, per-user limit,
//! buyers who cannot pay, the sale window, a flushed script cache.

use std::collections::HashMap;

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_stock_is_sold_to_a_crowd() {
    let app = spawn_app().await;
    let sale = app.open_sale(100, 250, 1).await;
    app.fund(1, 1000, 10_000).await;

    let buyer = app.buyer();
    let results = all(1..=1000i64, |user| {
        let buyer = buyer.clone();
        async move { (user, buyer.purchase(sale.id, user, json!(1)).await) }
    })
    .await;

    let accepted: Vec<_> = results
        .iter()
        .filter(|(_, (s, _))| *s == StatusCode::ACCEPTED)
        .collect();
    let sold_out = results
        .iter()
        .filter(|(_, (s, b))| *s == StatusCode::CONFLICT && b["error"] == "sold_out")
        .count();
    assert_eq!(accepted.len(), 100, "exactly the stock is accepted");
    assert_eq!(sold_out, 900, "everyone else is told sold_out");

    let view = app.drain(sale.id).await;
    assert_eq!(view["sold"], 100);
    assert_eq!(view["confirmed"], 100);
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'confirmed'",
            sale.id
        )
        .await,
        100
    );
    assert_eq!(
        app.scalar(
            "SELECT coalesce(sum(d.amount), 0)::int8 FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1",
            sale.id
        )
        .await,
        100 * sale.price
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM (SELECT user_id FROM orders WHERE event_id = $1 GROUP BY user_id HAVING count(*) > 1) d",
            sale.id
        )
        .await,
        0
    );
    // Every 202 is the order Postgres holds, for that user.
    for (user, (_, body)) in accepted {
        let order_no: uuid::Uuid = body["order_no"].as_str().unwrap().parse().unwrap();
        let (owner,): (i64,) = sqlx::query_as("SELECT user_id FROM orders WHERE order_no = $1")
            .bind(order_no)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(owner, *user);
    }
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_user_limit_holds_under_concurrent_attempts() {
    let app = spawn_app().await;
    let sale = app.open_sale(1_000, 100, 2).await;
    app.fund(1, 50, 10_000).await;

    let buyer = app.buyer();
    let attempts: Vec<i64> = (1..=50).flat_map(|u| std::iter::repeat_n(u, 5)).collect();
    let results = all(attempts, |user| {
        let buyer = buyer.clone();
        async move { (user, buyer.purchase(sale.id, user, json!(1)).await) }
    })
    .await;

    let mut per_user: HashMap<i64, usize> = HashMap::new();
    for (user, (status, body)) in &results {
        match *status {
            StatusCode::ACCEPTED => *per_user.entry(*user).or_default() += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"], "limit_exceeded", "{body}");
                assert!(
                    !body["order_nos"].as_array().unwrap().is_empty(),
                    "limit_exceeded names the held orders"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        per_user.values().all(|n| *n == 2),
        "every user got exactly the limit: {per_user:?}"
    );
    app.drain(sale.id).await;
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(1_000 - 100),
        "I1: stock conserved"
    );
    assert_eq!(
        app.scalar(
            "SELECT coalesce(max(q), 0)::int8 FROM (SELECT sum(quantity) AS q FROM orders WHERE event_id = $1 AND status <> 'failed' GROUP BY user_id) s",
            sale.id
        )
        .await,
        2
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buyers_who_cannot_pay_fail_and_their_stock_is_sold_to_others() {
    let app = spawn_app().await;
    let sale = app.open_sale(5, 300, 1).await;
    app.fund(1, 5, 100).await; // users 1..=5 cannot pay 300
    app.fund(100, 40, 1_000).await; // users 100..=139 can

    let buyer = app.buyer();
    let first = all(1..=5i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await.0 }
    })
    .await;
    assert!(
        first.iter().all(|s| *s == StatusCode::ACCEPTED),
        "stock is taken before payment: {first:?}"
    );

    // Their orders fail in the writer and the stock comes back (also clearing
    // the local sold-out flag), so the rich buyers can take all 5 units.
    app.drain(sale.id).await;
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(5),
        "failed orders returned their stock"
    );
    let failures = app
        .scalar(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND status = 'failed' AND failure_reason = 'insufficient_funds'",
            sale.id,
        )
        .await;
    assert_eq!(failures, 5);

    let second = all(100..140i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await.0 }
    })
    .await;
    assert_eq!(
        second
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        5
    );
    let view = app.drain(sale.id).await;
    assert_eq!(view["sold"], 5);
    assert_eq!(view["failed"], 5);
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    let (poor_min,): (i64,) = sqlx::query_as("SELECT min(balance) FROM wallets")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(poor_min >= 0);
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM wallets WHERE user_id <= $1 AND balance <> 100",
            5
        )
        .await,
        0,
        "nobody who failed was charged"
    );
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_sold_out_flag_clears_when_stock_comes_back() {
    let app = spawn_app().await;
    let sale = app.open_sale(1, 300, 1).await;
    app.fund(1, 1, 0).await; // cannot pay
    app.fund(2, 1, 1_000).await;
    assert_eq!(
        app.purchase(sale.id, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    // Sold out now (user 1 holds the unit until the writer fails the order).
    let (status, body) = app.purchase(sale.id, 2, json!(1)).await;
    if status == StatusCode::CONFLICT {
        assert_eq!(body["error"], "sold_out");
    }
    app.drain(sale.id).await;
    let mut got = None;
    for _ in 0..40 {
        let (status, _) = app.purchase(sale.id, 2, json!(1)).await;
        if status == StatusCode::ACCEPTED {
            got = Some(status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        got,
        Some(StatusCode::ACCEPTED),
        "stock that came back is sold again"
    );
    app.drain(sale.id).await;
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_sale_window_nothing_changes() {
    let app = spawn_app().await;
    app.fund(1, 1, 10_000).await;

    let later = app
        .create_event(10, 100, 1, Duration::hours(1), Duration::hours(1))
        .await;
    let (status, body) = app.purchase(later.id, 1, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active")),
        "not preheated"
    );
    app.preheat(later.id).await;
    let keys_before = app.redis_key_count().await;
    let (status, body) = app.purchase(later.id, 1, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active")),
        "before starts_at"
    );
    assert_eq!(app.stock_left(later.id).await, Some(10));
    assert_eq!(app.redis.buyers(later.id).await.unwrap().len(), 0);
    assert_eq!(app.redis.ledger(later.id).await.unwrap().len(), 0);
    assert_eq!(app.redis_key_count().await, keys_before, "no key created");

    let ending = app
        .create_event(
            10,
            100,
            1,
            Duration::seconds(-5),
            Duration::milliseconds(5_800),
        )
        .await;
    app.preheat(ending.id).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (status, body) = app.purchase(ending.id, 1, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_active")),
        "after ends_at"
    );
    assert_eq!(app.stock_left(ending.id).await, Some(10));
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", ending.id)
            .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE event_id = $1", later.id)
            .await,
        0
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_survive_a_flushed_script_cache() {
    let app = spawn_app().await;
    let sale = app.open_sale(60, 100, 1).await;
    app.fund(1, 60, 1_000).await;
    let buyer = app.buyer();
    let flusher = app.raw.clone();
    let results = all(1..=60i64, |user| {
        let (buyer, flusher) = (buyer.clone(), flusher.clone());
        async move {
            if user % 20 == 0 {
                let _: () = fred::prelude::ClientLike::custom(
                    &flusher,
                    fred::cmd!("SCRIPT"),
                    vec!["FLUSH"],
                )
                .await
                .unwrap();
            }
            buyer.purchase(sale.id, user, json!(1)).await.0
        }
    })
    .await;
    assert!(
        results.iter().all(|s| *s == StatusCode::ACCEPTED),
        "every purchase succeeded across SCRIPT FLUSH: {results:?}"
    );
    app.drain(sale.id).await;
    assert_eq!(app.stock_left(sale.id).await, Some(0));
    app.assert_invariants(sale.id).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_sold_out_here_an_unkeyed_purchase_is_answered_before_its_token_and_body() {
    let app = spawn_app().await;
    let sale = app.open_sale(1, 100, 1).await;
    app.fund(1, 2, 1_000).await;
    assert_eq!(
        app.purchase(sale.id, 1, json!(1)).await.0,
        StatusCode::ACCEPTED
    );
    // Redis says sold out once; this process remembers it.
    assert_eq!(
        app.purchase(sale.id, 2, json!(1)).await.1["error"],
        "sold_out"
    );

    let url = app.url(&format!("/api/events/{}/purchase", sale.id));
    let r = app
        .http
        .post(&url)
        .bearer_auth("not-a-token")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "the same answer for everyone"
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "sold_out"
    );
    // A keyed request is still checked in full (its key may hold a 202).
    let r = app
        .http
        .post(&url)
        .bearer_auth("not-a-token")
        .header("idempotency-key", "k")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And before sell-out a bad token is a 401 as ever.
    let other = app.open_sale(5, 100, 1).await;
    let r = app
        .http
        .post(app.url(&format!("/api/events/{}/purchase", other.id)))
        .bearer_auth("not-a-token")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_a_hashtable_from_its_first_intent_and_its_pin_is_no_intent() {
    use fred::prelude::*;
    let app = spawn_app_with(&[
        ("SECKILL_WRITERS", "1"),
        ("SECKILL_BATCH_LINGER_MS", "60000"),
        ("SECKILL_BATCH_MAX", "100"),
    ])
    .await;
    let sale = app.open_sale(10, 100, 5).await;
    app.fund(1, 3, 1_000).await;
    for user in 1..=3 {
        assert_eq!(
            app.purchase(sale.id, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    let ledger = seckill::redis::Keys::new(app.prefix.clone())
        .event(sale.id)
        .ledger;
    let encoding: String = app
        .raw
        .custom(
            fred::cmd!("OBJECT"),
            vec!["ENCODING".to_owned(), ledger.clone()],
        )
        .await
        .unwrap();
    assert_eq!(
        encoding, "hashtable",
        "three short intents would be a listpack"
    );
    let fields: i64 = app.raw.hlen(&ledger).await.unwrap();
    let state = app
        .redis
        .bucket_state(seckill::redis::Bucket::whole(sale.id))
        .await
        .unwrap();
    assert_eq!(
        (fields, state.pending),
        (4, 3),
        "three intents and the pin; the state counts the intents"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_call_past_its_budget_leaves_the_rest_untouched_for_the_next() {
    use fred::prelude::*;
    let app = spawn_app().await;
    let sale = app.open_sale(100_000, 1, 1).await;
    let keys = seckill::redis::Keys::new(app.prefix.clone()).event(sale.id);
    // Far more attempts than one call's budget covers (each takes µs).
    let attempts = 4_000i64;
    let order_nos: Vec<String> = (0..attempts)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut args: Vec<String> = Vec::new();
    for (i, order_no) in order_nos.iter().enumerate() {
        args.extend([(1_000 + i).to_string(), "1".to_owned(), order_no.clone()]);
    }
    let scripts = seckill::redis::Scripts::default();
    let replies: Vec<Vec<i64>> = app
        .raw
        .eval(scripts.purchase.body(), keys.clone().all(), args)
        .await
        .unwrap();
    let reached = replies.iter().take_while(|r| r[0] == 1).count();
    assert!(
        reached >= 8 && reached < attempts as usize,
        "{reached} reached"
    );
    assert!(
        replies[reached..].iter().all(|r| r == &vec![10]),
        "every attempt after the budget answers 10"
    );
    // What was reached is taken and pending; the rest left no trace.
    let stock: i64 = app.raw.get(&keys.stock).await.unwrap();
    assert_eq!(stock, 100_000 - reached as i64);
    let state = app
        .redis
        .bucket_state(seckill::redis::Bucket::whole(sale.id))
        .await
        .unwrap();
    assert_eq!(state.pending, reached as i64);
    let unreached: Vec<Option<String>> = app
        .raw
        .hmget(&keys.ledger, order_nos[reached..].to_vec())
        .await
        .unwrap();
    assert!(unreached.iter().all(Option::is_none));
    app.cleanup().await;
}
