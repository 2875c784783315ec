//! Stock buckets (one hot item split across hash tags): a crowd on an event
//! of several buckets sells exactly its stock, with transfers between the
//! buckets; a transfer cut after its first step is finished by the
//! reconciler; a lost bucket is rebuilt with what the others do not hold,
//! including a transfer in flight towards it; and a randomized run of
//! purchases, releases, refunds and transfers (some cut half way) against a
//! reference model of every bucket. All on real Redis and Postgres.

use std::collections::HashMap;

use fred::prelude::KeysInterface;

use reqwest::StatusCode;
use seckill::redis::{
    Bucket, PendingTransfer, PurchaseOutcome, RefundedOrder, SaleParams, FAILED_KEPT_PER_SHOPPER,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{all, spawn_app_with, TestApp};

/// An open, preheated event of `buckets` buckets.
async fn open_bucketed_sale(app: &TestApp, stock: i64, limit: i64, buckets: i64) -> i64 {
    let starts_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    let r = app
        .admin_post(
            "/admin/events",
            json!({"name": "hot item", "price": 100, "stock": stock, "per_user_limit": limit,
                   "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1),
                   "stock_buckets": buckets}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["stock_buckets"], buckets);
    let id = body["id"].as_i64().unwrap();
    app.preheat(id).await;
    id
}

/// How many repaired findings of `kind` the reconciler recorded for the
/// event (by any pass: the engine's own background pass may be the one
/// that got there first).
async fn repaired(app: &TestApp, event: i64, kind: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM reconcile_discrepancies WHERE event_id = $1 AND kind = $2 AND repaired",
    )
    .bind(event)
    .bind(kind)
    .fetch_one(&app.db)
    .await
    .unwrap();
    n
}

/// One unit each for every shopper of `users`, all at once: their statuses.
async fn crowd(app: &TestApp, event: i64, users: impl IntoIterator<Item = i64>) -> Vec<StatusCode> {
    let buyer = app.buyer();
    all(users, |user| {
        let buyer = buyer.clone();
        async move { buyer.purchase(event, user, json!(1)).await.0 }
    })
    .await
}

fn accepted(answers: &[StatusCode]) -> usize {
    answers
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count()
}

fn bucket_views(view: &Value) -> Vec<Value> {
    view["buckets"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_on_a_bucketed_item_sells_exactly_the_stock_with_transfers() {
    let app = spawn_app_with(&[("SECKILL_RECONCILE_GRACE_MS", "300")]).await;
    let (stock, shoppers) = (240, 600);
    let event = open_bucketed_sale(&app, stock, 1, 4).await;
    app.fund(1, shoppers, 10_000).await;

    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    let buckets = bucket_views(&view);
    assert_eq!(buckets.len(), 4);
    let shares: Vec<i64> = buckets
        .iter()
        .map(|b| b["stock_left"].as_i64().unwrap())
        .collect();
    assert_eq!(shares, vec![60, 60, 60, 60], "an even first split");
    let mut slots: Vec<i64> = buckets
        .iter()
        .map(|b| b["slot"].as_i64().unwrap())
        .collect();
    for (i, slot) in slots.iter().enumerate() {
        let range = (i as i64 * 16_384 / 4)..((i as i64 + 1) * 16_384 / 4);
        assert!(
            range.contains(slot),
            "bucket {i} on slot {slot}, not in {range:?}"
        );
    }
    slots.dedup();
    assert_eq!(slots.len(), 4, "one slot per bucket");

    // Skewed demand: only shoppers of buckets 0 and 1 (user ids ≡ 0, 1 mod
    // 4), 300 of them for 240 units: buckets 2 and 3 have no shopper of
    // their own, and every unit they hold must move to sell.
    let users: Vec<i64> = (1..=shoppers).filter(|u| u % 4 < 2).collect();
    let answers = crowd(&app, event, users.clone()).await;
    let bought = accepted(&answers) as i64;
    let sold_out = answers
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count() as i64;
    assert_eq!(bought, stock, "every unit sold, none twice: {answers:?}");
    assert_eq!(bought + sold_out, users.len() as i64);

    app.drain(event).await;
    let confirmed = app
        .scalar("SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM orders WHERE event_id = $1 AND status = 'confirmed'", event)
        .await;
    assert_eq!(confirmed, stock);
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    let moved_in: i64 = bucket_views(&view)
        .iter()
        .map(|b| b["moved_in"].as_i64().unwrap())
        .sum();
    let moved_out: i64 = bucket_views(&view)
        .iter()
        .map(|b| b["moved_out"].as_i64().unwrap())
        .sum();
    assert!(
        moved_in > 0,
        "bucket 0 ran dry and took stock from the others: {view:#}"
    );
    assert_eq!(moved_in, moved_out, "every transfer landed: {view:#}");
    for b in bucket_views(&view) {
        assert_eq!(
            b["stock_left"], 0,
            "sold out means every bucket empty: {view:#}"
        );
        assert_eq!(b["in_flight"], 0);
    }
    // Sold out, and the local flag answers the crowd that keeps clicking.
    assert_eq!(
        app.purchase(event, shoppers + 4, json!(1)).await.0,
        StatusCode::CONFLICT
    );
    let report = app.assert_invariants(event).await;
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "I1 buckets" && c["ok"] == true),
        "{report:#}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_after_its_first_step_is_finished_once_by_the_reconciler() {
    let app = spawn_app_with(&[("SECKILL_RECONCILE_GRACE_MS", "200")]).await;
    let event = open_bucketed_sale(&app, 30, 2, 3).await;
    app.fund(1, 60, 10_000).await;
    let (source, target) = (Bucket::new(event, 1, 3), Bucket::new(event, 0, 3));

    // The crash: the source's step ran, the target's never did.
    let id = Uuid::now_v7();
    let moved = app.redis.transfer_out(id, source, target, 1).await.unwrap();
    assert_eq!(moved, 5, "half of the source's 10 units");
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    let b = bucket_views(&view);
    assert_eq!(
        (b[0]["stock_left"].as_i64(), b[1]["stock_left"].as_i64()),
        (Some(10), Some(5))
    );
    assert_eq!(b[1]["in_flight"], 5);
    // In flight, the units are still the event's: the checker balances.
    app.assert_invariants(event).await;

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.reconcile().await;
    assert_eq!(repaired(&app, event, "transfer_unfinished").await, 1);
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    let b = bucket_views(&view);
    assert_eq!(b[0]["stock_left"], 15, "landed in the target: {view:#}");
    assert_eq!(b[1]["in_flight"], 0);
    assert_eq!(b[0]["moved_in"], 5);

    // A second pass, and a replay of the landing step, change nothing.
    let transfer = PendingTransfer {
        id,
        source,
        target,
        units: 5,
    };
    assert!(
        app.redis.transfer_in(&transfer).await.unwrap(),
        "answered, as applied before"
    );
    assert!(
        !app.redis.transfer_done(&transfer).await.unwrap(),
        "no record left"
    );
    app.reconcile().await;
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(bucket_views(&view)[0]["stock_left"], 15);
    assert_eq!(view["stock_left"], 30, "{view:#}");

    // The crowd takes all 30 units, not one more.
    let answers = crowd(&app, event, 1..=60i64).await;
    assert_eq!(accepted(&answers), 30);
    app.drain(event).await;
    app.assert_invariants(event).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bucket_is_rebuilt_with_what_the_others_do_not_hold() {
    let app = spawn_app_with(&[("SECKILL_RECONCILE_GRACE_MS", "200")]).await;
    let event = open_bucketed_sale(&app, 60, 1, 3).await;
    app.fund(1, 200, 10_000).await;
    // Some sales in every bucket.
    for user in 1..=24i64 {
        assert_eq!(
            app.purchase(event, user, json!(1)).await.0,
            StatusCode::ACCEPTED
        );
    }
    app.drain(event).await;
    // A transfer from bucket 2 towards bucket 1, cut after its first step,
    // then bucket 1 lost (its master restarted empty).
    let (lost, donor) = (Bucket::new(event, 1, 3), Bucket::new(event, 2, 3));
    let moved = app
        .redis
        .transfer_out(Uuid::now_v7(), donor, lost, 1)
        .await
        .unwrap();
    assert!(moved > 0);
    for key in app.redis.keys().event(lost).every() {
        let _: i64 = app.raw.del(key).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.reconcile().await;
    assert_eq!(repaired(&app, event, "redis_state_lost").await, 1);
    // The next pass lands the transfer into the rebuilt bucket.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.reconcile().await;
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(
        view["stock_left"],
        60 - 24,
        "nothing lost, nothing made: {view:#}"
    );
    app.assert_invariants(event).await;

    // Buyers of the rebuilt bucket keep their limit; the rest sells out exactly.
    let (status, body) = app.purchase(event, 1, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("limit_exceeded"))
    );
    let answers = crowd(&app, event, 25..=200i64).await;
    assert_eq!(accepted(&answers), 36);
    app.drain(event).await;
    let confirmed = app
        .scalar("SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM orders WHERE event_id = $1 AND status = 'confirmed'", event)
        .await;
    assert_eq!(confirmed, 60);
    app.assert_invariants(event).await;
    app.cleanup().await;
}

/// A Redis failover to a replica that missed one step of a transfer: the
/// target never got the units while the source's record is gone (units
/// lost), or the target got units the source never gave (units made). The
/// reconciler finds the buckets' totals off the event's and settles them:
/// the lost units back on sale, the made ones off it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_a_failover_broke_are_settled_by_the_reconciler() {
    let app = spawn_app_with(&[("SECKILL_RECONCILE_GRACE_MS", "200")]).await;
    let event = open_bucketed_sale(&app, 30, 1, 3).await;
    app.fund(1, 100, 10_000).await;
    let (a, b) = (Bucket::new(event, 0, 3), Bucket::new(event, 1, 3));

    // Lost: "out" and "done" on the source, the target's "in" gone.
    let id = Uuid::now_v7();
    let units = app.redis.transfer_out(id, a, b, 1).await.unwrap();
    assert_eq!(units, 5);
    let lost = PendingTransfer {
        id,
        source: a,
        target: b,
        units,
    };
    assert!(app.redis.transfer_done(&lost).await.unwrap());
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(view["stock_left"], 25, "{view:#}");
    let report = app
        .admin_get(&format!("/admin/events/{event}/invariants"))
        .await;
    assert_eq!(
        report["ok"], false,
        "the checker sees the missing units: {report:#}"
    );

    app.reconcile().await;
    assert_eq!(repaired(&app, event, "bucket_totals_drift").await, 1);
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(
        view["stock_left"], 30,
        "the lost units are on sale again: {view:#}"
    );
    app.assert_invariants(event).await;

    // Made: the target's "in" without the source's "out".
    let made = PendingTransfer {
        id: Uuid::now_v7(),
        source: a,
        target: b,
        units: 4,
    };
    assert!(app.redis.transfer_in(&made).await.unwrap());
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(view["stock_left"], 34);
    app.reconcile().await;
    assert_eq!(repaired(&app, event, "bucket_totals_drift").await, 2);
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(
        view["stock_left"], 30,
        "the made units are off sale: {view:#}"
    );
    app.assert_invariants(event).await;

    // And the crowd buys exactly 30.
    let answers = crowd(&app, event, 1..=100i64).await;
    assert_eq!(accepted(&answers), 30);
    app.drain(event).await;
    app.assert_invariants(event).await;
    app.cleanup().await;
}

async fn admin_call(app: &TestApp, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app
        .http
        .post(app.url(path))
        .bearer_auth(crate::helpers::ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Pause, resume, a stock adjustment and the end reach every bucket: a
/// paused sale refuses shoppers of every home bucket, added units sell
/// through transfers, and after the end no bucket sells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_switches_and_adjustments_reach_every_bucket() {
    let app = spawn_app_with(&[]).await;
    // Not preheated: no bucket to balance, and the checker says so (the
    // short schemathesis run created such an event).
    let starts_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let r = app
        .admin_post(
            "/admin/events",
            json!({"name": "later", "price": 1, "stock": 1, "per_user_limit": 1,
                   "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1),
                   "stock_buckets": 46}),
        )
        .await;
    let later: Value = r.json().await.unwrap();
    app.assert_invariants(later["id"].as_i64().unwrap()).await;

    let event = open_bucketed_sale(&app, 9, 1, 3).await;
    app.fund(1, 60, 10_000).await;
    assert_eq!(
        admin_call(&app, &format!("/admin/events/{event}/pause"), None)
            .await
            .0,
        StatusCode::OK
    );
    for user in 1..=3i64 {
        let (status, body) = app.purchase(event, user, json!(1)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("sale_paused")),
            "user {user}"
        );
    }
    assert_eq!(
        admin_call(&app, &format!("/admin/events/{event}/resume"), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = admin_call(
        &app,
        &format!("/admin/events/{event}/stock"),
        Some(json!({"delta": 6, "reason": "supplier delivery"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = app.admin_get(&format!("/admin/events/{event}")).await;
    assert_eq!(view["stock_left"], 15, "{view:#}");
    assert_eq!(
        bucket_views(&view)[0]["stock_left"],
        9,
        "added to the first bucket"
    );
    // Shoppers of bucket 1 and 2 only: the added units reach them by transfers.
    let answers = crowd(&app, event, (1..=45i64).filter(|u| u % 3 != 0)).await;
    assert_eq!(accepted(&answers), 15);
    app.drain(event).await;
    app.assert_invariants(event).await;
    assert_eq!(
        admin_call(
            &app,
            &format!("/admin/events/{event}/stock"),
            Some(json!({"delta": 3, "reason": "late"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        admin_call(&app, &format!("/admin/events/{event}/end"), None)
            .await
            .0,
        StatusCode::OK
    );
    for user in 46..=48i64 {
        let (status, body) = app.purchase(event, user, json!(1)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("not_active")),
            "user {user}"
        );
    }
    app.cleanup().await;
}

/// SplitMix64, as in the single-bucket model test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The reference model of one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelBucket {
    stock: i64,
    total: i64,
    held: HashMap<i64, i64>,
    moved_in: i64,
    moved_out: i64,
    /// transfer id -> (target, units), not confirmed yet.
    records: HashMap<Uuid, (u16, i64)>,
    received: Vec<Uuid>,
}

/// One order the model knows: where it lives and what it holds.
#[derive(Clone, Copy, Debug)]
struct ModelOrder {
    user: i64,
    quantity: i64,
    /// Units it holds (released or refunded: none).
    live: bool,
}

/// Random purchases (through each shopper's home bucket), stock moving
/// between buckets in three steps (some cut after the first or second and
/// finished later, some steps replayed), releases of failed orders and
/// refunds: after every step each bucket's stock, total, transfer counters
/// and records in Redis equal the model's, every bucket balances (stock +
/// held = total) and the event's units are conserved (Σ totals + in flight
/// = the stock the event started with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_transfers_agree_with_the_reference_model() {
    let app = spawn_app_with(&[]).await;
    let seeds = std::env::var("SECKILL_MODEL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4u64);
    let steps = std::env::var("SECKILL_MODEL_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    for seed in 0..seeds {
        run_bucket_model(&app, 1_000 + seed, steps).await;
    }
    app.cleanup().await;
}

async fn run_bucket_model(app: &TestApp, seed: u64, steps: u64) {
    let mut rng = Rng(seed);
    let event = 9_000_000 + seed as i64 * 10 + rng.below(10) as i64;
    let of = 2 + rng.below(4) as u16;
    let limit = 3;
    let stock = 20 + rng.below(40) as i64;
    let sale = |total| SaleParams {
        price: 10,
        per_user_limit: limit,
        starts_ms: 0,
        ends_ms: i64::MAX / 2,
        stock_total: total,
        paused: false,
    };
    let mut model: Vec<ModelBucket> = Vec::new();
    for bucket in Bucket::all(event, of) {
        let share = seckill::loading::first_share(stock, bucket);
        assert!(app.redis.preheat(bucket, sale(share)).await.unwrap());
        model.push(ModelBucket {
            stock: share,
            total: share,
            ..Default::default()
        });
    }
    let mut orders: HashMap<Uuid, ModelOrder> = HashMap::new();
    // Transfers cut after a step: (transfer, steps done: 1 or 2).
    let mut cut: Vec<(PendingTransfer, u8)> = Vec::new();
    let users = 12i64;

    for step in 0..steps {
        let at = format!("seed {seed} step {step}");
        match rng.below(10) {
            0..=3 => {
                let user = 1 + rng.below(users as u64) as i64;
                let quantity = 1 + rng.below(2) as i64;
                let home = Bucket::home(event, of, user);
                let m = &mut model[home.index as usize];
                let holds = m.held.get(&user).copied().unwrap_or(0);
                let order_no = Uuid::now_v7();
                let outcome = app
                    .redis
                    .purchase(home, user, quantity as i32, order_no)
                    .await
                    .unwrap();
                let expect = if holds + quantity > limit as i64 {
                    "limit"
                } else if m.stock < quantity {
                    "sold out"
                } else {
                    "accepted"
                };
                match (&outcome, expect) {
                    (PurchaseOutcome::Accepted { replay: false, .. }, "accepted") => {
                        m.stock -= quantity;
                        *m.held.entry(user).or_default() += quantity;
                        orders.insert(
                            order_no,
                            ModelOrder {
                                user,
                                quantity,
                                live: true,
                            },
                        );
                    }
                    (PurchaseOutcome::LimitExceeded { .. }, "limit") => {}
                    (PurchaseOutcome::SoldOut { stock_left }, "sold out") => {
                        assert_eq!(*stock_left, m.stock, "{at}");
                    }
                    other => panic!("{at}: {other:?}, model expected {expect}"),
                }
            }
            4..=5 => {
                // A transfer towards a random bucket: complete, or cut.
                let target = Bucket::new(event, rng.below(of as u64) as u16, of);
                let source = Bucket::new(
                    event,
                    ((target.index as u64 + 1 + rng.below(of as u64 - 1)) % of as u64) as u16,
                    of,
                );
                let at_least = 1 + rng.below(2) as i64;
                let id = Uuid::now_v7();
                let units = app
                    .redis
                    .transfer_out(id, source, target, at_least)
                    .await
                    .unwrap();
                let s = &mut model[source.index as usize];
                let want = if s.stock < 1 {
                    0
                } else {
                    at_least
                        .max(((s.stock + 1) / 2).min(seckill::redis::transfer::TRANSFER_AT_MOST))
                        .min(s.stock)
                };
                assert_eq!(units, want, "{at}: out");
                if units > 0 {
                    s.stock -= units;
                    s.total -= units;
                    s.moved_out += units;
                    s.records.insert(id, (target.index, units));
                    let transfer = PendingTransfer {
                        id,
                        source,
                        target,
                        units,
                    };
                    match rng.below(3) {
                        0 => cut.push((transfer, 1)),
                        _ => {
                            land(app, &mut model, &transfer, &at).await;
                            if rng.below(4) == 0 {
                                cut.push((transfer, 2));
                            } else {
                                confirm(app, &mut model, &transfer, &at).await;
                            }
                        }
                    }
                }
            }
            6 => {
                // The reconciler's step for a cut transfer, sometimes replayed.
                if !cut.is_empty() {
                    let (transfer, done) = cut.swap_remove(rng.below(cut.len() as u64) as usize);
                    let arrived = app.redis.transfer_arrived(&transfer).await.unwrap();
                    assert_eq!(arrived, done == 2, "{at}: arrival");
                    if !arrived || rng.below(2) == 0 {
                        land(app, &mut model, &transfer, &at).await;
                    }
                    confirm(app, &mut model, &transfer, &at).await;
                    if rng.below(3) == 0 {
                        land(app, &mut model, &transfer, &at).await;
                        assert!(
                            !app.redis.transfer_done(&transfer).await.unwrap(),
                            "{at}: done twice"
                        );
                    }
                }
            }
            7 => {
                // A failed order released (restocked in its home bucket).
                let live: Vec<Uuid> = orders
                    .iter()
                    .filter(|(_, o)| o.live)
                    .map(|(k, _)| *k)
                    .collect();
                if !live.is_empty() {
                    let order_no = live[rng.below(live.len() as u64) as usize];
                    let o = orders.get_mut(&order_no).unwrap();
                    let home = Bucket::home(event, of, o.user);
                    let units = app.redis.release(home, &[order_no]).await.unwrap();
                    assert_eq!(units, o.quantity, "{at}: release");
                    o.live = false;
                    let m = &mut model[home.index as usize];
                    m.stock += o.quantity;
                    *m.held.get_mut(&o.user).unwrap() -= o.quantity;
                }
            }
            8 => {
                // A confirmed order acked, then refunded: its units come back once.
                let live: Vec<Uuid> = orders
                    .iter()
                    .filter(|(_, o)| o.live)
                    .map(|(k, _)| *k)
                    .collect();
                if !live.is_empty() {
                    let order_no = live[rng.below(live.len() as u64) as usize];
                    let o = orders.get_mut(&order_no).unwrap();
                    let home = Bucket::home(event, of, o.user);
                    assert_eq!(
                        app.redis.ack(home, &[order_no]).await.unwrap(),
                        1,
                        "{at}: ack"
                    );
                    let refunded = RefundedOrder {
                        order_no,
                        user_id: o.user,
                        quantity: o.quantity as i32,
                    };
                    for _ in 0..2 {
                        app.redis.return_refunded(home, &[refunded]).await.unwrap();
                    }
                    o.live = false;
                    let m = &mut model[home.index as usize];
                    m.stock += o.quantity;
                    *m.held.get_mut(&o.user).unwrap() -= o.quantity;
                }
            }
            _ => {
                // Replaying a landed transfer's step changes nothing.
                let done: Vec<Uuid> = model.iter().flat_map(|m| m.received.clone()).collect();
                if let Some(&id) = done.first() {
                    let target = model.iter().position(|m| m.received.contains(&id)).unwrap();
                    let transfer = PendingTransfer {
                        id,
                        source: Bucket::new(event, 0, of),
                        target: Bucket::new(event, target as u16, of),
                        units: 1,
                    };
                    assert!(app.redis.transfer_in(&transfer).await.unwrap());
                }
            }
        }
        compare(app, event, of, stock, &model, &at).await;
    }
    // Every cut transfer finished: nothing in flight, all units sold or on sale.
    for (transfer, done) in std::mem::take(&mut cut) {
        if done == 1 {
            land(app, &mut model, &transfer, "finish").await;
        }
        confirm(app, &mut model, &transfer, "finish").await;
    }
    compare(app, event, of, stock, &model, "finish").await;
    for bucket in Bucket::all(event, of) {
        for key in app.redis.keys().event(bucket).every() {
            let _: i64 = app.raw.del(key).await.unwrap();
        }
    }
}

async fn land(app: &TestApp, model: &mut [ModelBucket], transfer: &PendingTransfer, at: &str) {
    let t = &mut model[transfer.target.index as usize];
    let first = !t.received.contains(&transfer.id);
    assert!(app.redis.transfer_in(transfer).await.unwrap(), "{at}: in");
    if first {
        t.received.push(transfer.id);
        t.stock += transfer.units;
        t.total += transfer.units;
        t.moved_in += transfer.units;
    }
}

async fn confirm(app: &TestApp, model: &mut [ModelBucket], transfer: &PendingTransfer, at: &str) {
    assert!(
        app.redis.transfer_done(transfer).await.unwrap(),
        "{at}: done"
    );
    model[transfer.source.index as usize]
        .records
        .remove(&transfer.id);
}

async fn compare(app: &TestApp, event: i64, of: u16, stock: i64, model: &[ModelBucket], at: &str) {
    let mut accounted = 0;
    for bucket in Bucket::all(event, of) {
        let m = &model[bucket.index as usize];
        let s = app.redis.sale_state(bucket).await.unwrap();
        let in_flight: i64 = m.records.values().map(|(_, u)| u).sum();
        let unlanded: i64 = m
            .records
            .iter()
            .filter(|(id, (target, _))| !model[*target as usize].received.contains(id))
            .map(|(_, (_, u))| u)
            .sum();
        assert_eq!(
            app.redis.unlanded_units(bucket).await.unwrap(),
            unlanded,
            "{at}: unlanded"
        );
        let held: i64 = m.held.values().sum();
        assert_eq!(
            (
                s.stock_left,
                s.total,
                s.held,
                s.moved_in,
                s.moved_out,
                s.in_flight
            ),
            (
                Some(m.stock),
                m.total,
                Some(held),
                m.moved_in,
                m.moved_out,
                in_flight
            ),
            "{at}: bucket {} (stock, total, held, in, out, in flight)",
            bucket.index
        );
        assert_eq!(
            m.stock + held,
            m.total,
            "{at}: bucket {} balances",
            bucket.index
        );
        let records = app.redis.pending_transfers(bucket).await.unwrap();
        assert_eq!(
            records.len(),
            m.records.len(),
            "{at}: records of bucket {}",
            bucket.index
        );
        for r in records {
            assert_eq!(
                m.records.get(&r.id),
                Some(&(r.target.index, r.units)),
                "{at}"
            );
        }
        let bought = app.redis.buyers(bucket).await.unwrap();
        for (user, units) in &m.held {
            assert_eq!(
                bought.get(user).copied().unwrap_or(0),
                *units,
                "{at}: user {user}"
            );
            assert_eq!(
                Bucket::home(event, of, *user),
                bucket,
                "{at}: a shopper in one bucket"
            );
        }
        accounted += s.total + unlanded;
    }
    assert_eq!(
        accounted, stock,
        "{at}: Σ totals + in flight = the event's stock"
    );
    let _ = FAILED_KEPT_PER_SHOPPER;
}
