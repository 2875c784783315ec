//! `GET /api/events/{id}`: the page every shopper refreshes is answered from
//! the catalog, with no Postgres query and no Redis round trip per call, and
//! unknown ids cannot starve the writers of Postgres connections.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{all, spawn_app_env, LocalRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_page_asks_neither_postgres_nor_redis_per_call() {
    let redis = LocalRedis::start().await;
    let app = spawn_app_env(vec![("SECKILL_REDIS_URL".into(), redis.url())]).await;
    let sale = app.open_sale(7, 100, 1).await;
    let page = format!("/api/events/{}", sale.id);
    let first = app.get_as(&page, None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        (body["stock_left"].as_i64(), body["status"].as_str()),
        (Some(7), Some("active"))
    );
    // Let the catalog learn the highest event id.
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    // Postgres is unusable for the events table from now on: any query on it waits.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let gets_before = redis.calls("get");
    let started = Instant::now();
    let answers = all(0..400, |_| {
        let (http, url) = (app.http.clone(), app.url(&page));
        async move {
            let r = http.get(url).timeout(Duration::from_secs(2)).send().await;
            r.map(|r| r.status()).ok()
        }
    })
    .await;
    let took = started.elapsed();
    let gets = redis.calls("get") - gets_before;
    assert!(
        answers.iter().all(|s| *s == Some(StatusCode::OK)),
        "every view answered without Postgres: {answers:?}"
    );
    // The refresher reads the stock every 100 ms, whatever the crowd does.
    let refreshes = took.as_millis() as u64 / 100 + 3;
    assert!(
        gets <= refreshes,
        "{gets} Redis GETs for 400 views in {took:?}"
    );

    lock.rollback().await.unwrap();

    // A flood of unknown ids is answered 404 from the catalog (one read of the
    // highest id every 50 ms at most), and the writers keep their pool: the
    // purchases made meanwhile are persisted.
    app.fund(1, 5, 1_000).await;
    let buyer = app.buyer();
    let purchases = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for user in 1..=5 {
            statuses.push(buyer.purchase(sale.id, user, serde_json::json!(1)).await.0);
        }
        statuses
    });
    let started = Instant::now();
    let unknown = all(0..500i64, |i| {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/api/events/{}", 1_000 + i)),
        );
        async move { http.get(url).send().await.map(|r| r.status()).ok() }
    })
    .await;
    assert!(
        unknown.iter().all(|s| *s == Some(StatusCode::NOT_FOUND)),
        "{unknown:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(purchases
        .await
        .unwrap()
        .iter()
        .all(|s| *s == StatusCode::ACCEPTED));
    app.drain(sale.id).await;

    // Revalidation: an unchanged page is a 304, a changed one a 200.
    let stale = app
        .http
        .get(app.url(&page))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK, "the stock moved since");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let etag = app.get_as(&page, None).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .get(app.url(&page))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=0"));

    // The purchases show within the refresh interval.
    let body: Value = app.get_as(&page, None).await.json().await.unwrap();
    assert_eq!(body["stock_left"], 2);
    app.cleanup().await;
}

/// A process that just started knows no event yet: a burst of concurrent
/// first requests for an existing one must all find it (one reads the
/// highest id, the others wait for that read instead of answering 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_catalog_finds_an_existing_event_under_a_burst_of_first_requests() {
    let app = spawn_app_env(Vec::new()).await;
    let sale = app.open_sale(5, 100, 1).await;
    for _ in 0..20 {
        let catalog = std::sync::Arc::new(seckill::catalog::Catalog::default());
        let found = all(0..32, |_| {
            let (catalog, db) = (catalog.clone(), app.db.clone());
            async move { catalog.get(&db, sale.id).await.unwrap().is_some() }
        })
        .await;
        assert!(
            found.iter().all(|&f| f),
            "{} of 32 first requests did not find event {}",
            found.iter().filter(|&&f| !f).count(),
            sale.id
        );
    }
    app.cleanup().await;
}
