//! The transactional outbox: one event per persisted order state, written by
//! the writer's transaction, and the relay publishing each exactly once to
//! NATS JetStream (the server `make services` runs, on a stream of the
//! test's own).

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use seckill::{intent::Intent, outbox::reader::read_events, writer::persist::persist_batch};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{all, spawn_app, spawn_app_env};

fn nats_url() -> String {
    std::env::var("SECKILL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Orders whose outbox rows do not match them: missing, doubled, or with
/// another kind, status or amount than the order row.
async fn mismatched_events(db: &sqlx::PgPool, event_id: i64) -> Vec<(Uuid, i64)> {
    sqlx::query_as(
        "SELECT o.order_no, count(x.id) FROM orders o
         LEFT JOIN outbox_events x ON x.order_no = o.order_no
              AND x.kind = 'order.' || o.status
              AND x.payload->>'status' = o.status
              AND (x.payload->>'amount')::int8 = o.amount
              AND (x.payload->>'user_id')::int8 = o.user_id
              AND x.payload->>'failure_reason' IS NOT DISTINCT FROM o.failure_reason
         WHERE o.event_id = $1 GROUP BY o.order_no HAVING count(x.id) <> 1",
    )
    .bind(event_id)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_persisted_order_state_has_exactly_one_event() {
    let app = spawn_app().await;
    let sale = app.open_sale(30, 100, 1).await;
    // Shoppers 1..=25 can pay; 26..=40 have no wallet: their orders fail.
    app.fund(1, 25, 100).await;
    let buyer = app.buyer();
    let answers = all(1..=40i64, |u| {
        let buyer = buyer.clone();
        async move { (u, buyer.purchase(sale.id, u, json!(1)).await.0) }
    })
    .await;
    let accepted = |unfunded: bool| {
        answers
            .iter()
            .filter(|(u, s)| *s == StatusCode::ACCEPTED && (*u > 25) == unfunded)
            .count() as i64
    };
    // A failed order gives its unit back, so more than 30 may be accepted.
    let accepted_total = accepted(false) + accepted(true);
    assert!(accepted_total >= 30, "{answers:?}");
    app.drain(sale.id).await;

    let (orders, events, failed_events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE event_id = $1),
                (SELECT count(*) FROM outbox_events WHERE event_id = $1),
                (SELECT count(*) FROM outbox_events WHERE event_id = $1 AND kind = 'order.failed')",
    )
    .bind(sale.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((orders, events), (accepted_total, accepted_total));
    assert_eq!(
        failed_events,
        accepted(true),
        "the unfunded shoppers' orders failed"
    );
    assert_eq!(mismatched_events(&app.db, sale.id).await, vec![]);

    // A replay of an order already persisted (a writer retry, the
    // reconciler) owes no second event; a new order through the same path does.
    let (order_no,): (Uuid,) =
        sqlx::query_as("SELECT order_no FROM orders WHERE event_id = $1 LIMIT 1")
            .bind(sale.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let replayed = Intent {
        buckets: 1,
        order_no,
        event_id: sale.id,
        user_id: 1,
        quantity: 1,
        amount: 100,
        accepted_at: Utc::now(),
    };
    persist_batch(&app.db, &[replayed], None).await.unwrap();
    assert_eq!(mismatched_events(&app.db, sale.id).await, vec![]);
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM outbox_events WHERE event_id = $1",
            sale.id
        )
        .await,
        accepted_total
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_batch_leaves_no_event() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 5).await;
    app.fund(1, 1, 1_000).await;
    // The stock CHECK refuses the batch (sold > stock_total) after the
    // orders and their outbox rows were inserted: all of it rolls back.
    sqlx::query("UPDATE events SET sold = stock_total WHERE id = $1")
        .bind(sale.id)
        .execute(&app.db)
        .await
        .unwrap();
    let intent = Intent {
        buckets: 1,
        order_no: Uuid::now_v7(),
        event_id: sale.id,
        user_id: 1,
        quantity: 1,
        amount: 100,
        accepted_at: Utc::now(),
    };
    // Postgres says no stock is left: the order persists as failed
    // (stock_lost), with its order.failed event, uncharged.
    let result = persist_batch(&app.db, &[intent], None).await.unwrap();
    assert_eq!(result.failed.len(), 1);
    let (kind, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT kind, payload->>'failure_reason' FROM outbox_events WHERE order_no = $1",
    )
    .bind(intent.order_no)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), reason.as_deref()),
        ("order.failed", Some("stock_lost"))
    );

    // A batch that fails mid-transaction writes no event at all.
    sqlx::query(
        "CREATE FUNCTION refuse_debits() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '23P01'; END $$",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET sold = 0 WHERE id = $1")
        .bind(sale.id)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON wallet_ledger FOR EACH ROW EXECUTE FUNCTION refuse_debits()",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let doomed = Intent {
        buckets: 1,
        order_no: Uuid::now_v7(),
        ..intent
    };
    assert!(persist_batch(&app.db, &[doomed], None).await.is_err());
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM outbox_events WHERE event_id = $1",
            sale.id
        )
        .await,
        1,
        "the rolled-back order left no event"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_published_rows_are_deleted_and_unpublished_ones_kept() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 5).await;
    app.fund(1, 3, 1_000).await;
    // One purchase drained at a time: three writer batches, three rows.
    for user in 1..=3 {
        let (status, _) = app.purchase(sale.id, user, json!(1)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        app.drain(sale.id).await;
    }
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    // Published long ago, published just now, never published.
    sqlx::query("UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = $1")
        .bind(ids[0].0)
        .execute(&app.db)
        .await
        .unwrap();
    seckill::db::outbox::mark_published(&app.db, &[ids[1].0])
        .await
        .unwrap();
    let (owed, oldest) = seckill::db::outbox::backlog(&app.db).await.unwrap();
    assert_eq!(owed, 1, "one row never published");
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
    let deleted = seckill::db::outbox::delete_published(
        &app.db,
        Utc::now() - chrono::Duration::hours(1),
        100,
    )
    .await
    .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<(i64,)> = sqlx::query_as("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(left, vec![ids[1], ids[2]]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_publishes_each_order_event_once_to_jetstream() {
    let tag = Uuid::new_v4().simple().to_string()[..10].to_string();
    let stream = format!("TEST_{tag}");
    let subjects = format!("t{tag}.orders");
    let app = spawn_app_env(vec![
        ("SECKILL_NATS_URL".into(), nats_url()),
        ("SECKILL_NATS_STREAM".into(), stream.clone()),
        ("SECKILL_NATS_SUBJECT_PREFIX".into(), subjects.clone()),
    ])
    .await;
    let sale = app.open_sale(40, 100, 1).await;
    app.fund(1, 35, 100).await;
    let buyer = app.buyer();
    all(1..=50i64, |u| {
        let buyer = buyer.clone();
        async move { buyer.purchase(sale.id, u, json!(1)).await }
    })
    .await;
    app.drain(sale.id).await;
    let mut unpublished = i64::MAX;
    for _ in 0..100 {
        unpublished = app
            .scalar(
                "SELECT count(*) FROM outbox_events WHERE event_id = $1 AND published_at IS NULL",
                sale.id,
            )
            .await;
        if unpublished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unpublished, 0, "the relay published every row within 10 s");

    let events = read_events(
        &nats_url(),
        &stream,
        &format!("{subjects}.{}.>", sale.id),
        Duration::from_secs(3),
    )
    .await
    .expect("read the stream");
    let orders: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT order_no, status FROM orders WHERE event_id = $1 ORDER BY order_no")
            .bind(sale.id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(
        orders.len() >= 40,
        "the stock sold, failed orders gave theirs back"
    );
    let mut seen: Vec<(Uuid, String)> = events
        .iter()
        .map(|e| (e.order_no, e.status.clone()))
        .collect();
    seen.sort();
    assert_eq!(seen, orders, "exactly one event per persisted order state");
    for e in &events {
        let short = e.kind.trim_start_matches("order.");
        assert_eq!(e.subject, format!("{subjects}.{}.{short}", sale.id));
        assert_eq!(e.message_id, Some(format!("{}:{}", e.order_no, e.kind)));
    }
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));

    // Publishing the same rows again (a relay that died before stamping
    // them) adds nothing: the broker deduplicates on Nats-Msg-Id.
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE event_id = $1")
        .bind(sale.id)
        .execute(&app.db)
        .await
        .unwrap();
    for _ in 0..100 {
        unpublished = app
            .scalar(
                "SELECT count(*) FROM outbox_events WHERE event_id = $1 AND published_at IS NULL",
                sale.id,
            )
            .await;
        if unpublished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unpublished, 0);
    let again = read_events(
        &nats_url(),
        &stream,
        &format!("{subjects}.{}.>", sale.id),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(
        again.len(),
        orders.len(),
        "republished rows were deduplicated"
    );

    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
    app.cleanup().await;
}

/// Published and unpublished order events of a sale.
async fn published_and_owed(app: &crate::helpers::TestApp, event_id: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) FILTER (WHERE published_at IS NULL)
         FROM outbox_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_yields_to_a_crowd_within_its_longest_lag_then_catches_up() {
    let tag = Uuid::new_v4().simple().to_string()[..10].to_string();
    let stream = format!("TEST_{tag}");
    let app = spawn_app_env(vec![
        ("SECKILL_NATS_URL".into(), nats_url()),
        ("SECKILL_NATS_STREAM".into(), stream.clone()),
        (
            "SECKILL_NATS_SUBJECT_PREFIX".into(),
            format!("t{tag}.orders"),
        ),
        ("SECKILL_OUTBOX_YIELD_RPS".into(), "20".into()),
        ("SECKILL_OUTBOX_MAX_LAG_SECS".into(), "4".into()),
    ])
    .await;
    let sale = app.open_sale(1_000_000, 1, 1).await;
    app.fund(1, 100_000, 100).await;

    // A crowd well above 20 purchases/s for 9 s: eight shoppers' loops.
    let started = std::time::Instant::now();
    let crowd_for = Duration::from_secs(9);
    let next_user = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (buyer, next_user) = (app.buyer(), next_user.clone());
        loops.push(tokio::spawn(async move {
            while started.elapsed() < crowd_for {
                let user = next_user.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (status, _) = buyer.purchase(sale.id, user, json!(1)).await;
                assert_eq!(status, StatusCode::ACCEPTED);
            }
        }));
    }
    // Held back: from 1.5 s in (the backlog gauge has seen the owed events)
    // to 3 s, nothing more is published while the owed events pile up.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (held_from, owed_early) = published_and_owed(&app, sale.id).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (held_to, owed_later) = published_and_owed(&app, sale.id).await;
    assert_eq!(
        held_from, held_to,
        "the relay published during the crowd before its longest lag"
    );
    assert!(
        owed_later > owed_early && owed_early > 0,
        "{owed_early} then {owed_later} owed"
    );
    // The bound: past 4 s of lag it publishes though the crowd goes on.
    let mut published_in_crowd = held_to;
    while started.elapsed() < crowd_for - Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        published_in_crowd = published_and_owed(&app, sale.id).await.0;
    }
    assert!(
        published_in_crowd > held_to,
        "events older than the longest lag were published during the crowd"
    );
    for l in loops {
        l.await.unwrap();
    }
    // The crowd gone, it catches up.
    app.drain(sale.id).await;
    let mut owed = i64::MAX;
    for _ in 0..100 {
        owed = published_and_owed(&app, sale.id).await.1;
        if owed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owed, 0, "every event published within 10 s of the crowd");
    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
    app.cleanup().await;
}
