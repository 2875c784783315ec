//! `seckill_http_requests_total` counts every answer, the rejections made
//! before a handler runs included; the access log names each request by its
//! id; the reconciler reports its leadership and each ledger's oldest intent.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::rig::Rig;

const PURCHASE: &str = "/api/events/{id}/purchase";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_counted_by_route_and_status_and_logged_with_its_request_id() {
    let mut rig = Rig::new("http-metrics").await;
    rig.start_engine(&[
        ("SECKILL_RATE_USER_RPS", "1"),
        ("SECKILL_RATE_USER_BURST", "1"),
        ("SECKILL_BODY_TIMEOUT_MS", "300"),
        ("SECKILL_ACCESS_LOG", "all"),
    ])
    .await;
    let event = rig.open_sale(10, 10).await;
    let url = rig.url(0, &format!("/api/events/{event}/purchase"));
    let post = |user: Option<i64>| {
        let mut r = rig.http.post(&url);
        if let Some(user) = user {
            r = r.bearer_auth(rig.token(user));
        }
        r
    };
    let statuses = [
        // 401: no token, with a request id of our own to find in the log.
        post(None)
            .header("x-request-id", "ops-test-401")
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        // 415: not JSON.
        post(Some(1))
            .header("content-type", "text/plain")
            .body("quantity=1")
            .send()
            .await
            .unwrap()
            .status(),
        // 413: over the body limit.
        post(Some(2))
            .header("content-type", "application/json")
            .body(format!(r#"{{"quantity":1,"pad":"{}"}}"#, "x".repeat(8192)))
            .send()
            .await
            .unwrap()
            .status(),
        // 400: malformed JSON.
        post(Some(3))
            .header("content-type", "application/json")
            .body(r#"{"quantity":"#)
            .send()
            .await
            .unwrap()
            .status(),
        // 202, then 429 for the same shopper (1 per second, burst 1).
        post(Some(4))
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        post(Some(4))
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await
            .unwrap()
            .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [401, 415, 413, 400, 202, 429]);
    // 408: a body that never arrives.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", rig.engines[0].port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/events/{event}/purchase HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{{\"qu",
        rig.token(5)
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered within the body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(tcp);
    // 404 for a path no route matches, 405 for a method a route lacks.
    let r = rig
        .http
        .get(rig.url(0, "/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = rig
        .http
        .delete(rig.url(0, &format!("/api/events/{event}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    let m = rig.metrics(0).await;
    let count = |route: &str, method: &str, status: &str| {
        m.value(
            "seckill_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    for status in ["401", "415", "413", "400", "202", "429", "408"] {
        assert_eq!(count(PURCHASE, "POST", status), 1.0, "purchase {status}");
    }
    assert_eq!(count("unmatched", "GET", "404"), 1.0);
    assert_eq!(count("/api/events/{id}", "DELETE", "405"), 1.0);
    assert!(count("/readyz", "GET", "200") >= 1.0);
    assert_eq!(
        m.value(
            "seckill_http_request_duration_seconds_count",
            &[("route", PURCHASE)]
        ),
        7.0,
        "one latency sample per purchase request"
    );
    assert!(
        !m.samples
            .iter()
            .any(|(n, l, _)| n == "seckill_http_requests_total" && l["route"].contains("no/such")),
        "raw paths never become labels"
    );

    // Counters alerts watch exist from the start, at 0 until something happens.
    for kind in seckill::reconciler::DISCREPANCY_KINDS {
        assert!(
            m.samples
                .iter()
                .any(|(n, l, _)| n == "seckill_reconcile_discrepancies_total"
                    && l.get("kind").map(String::as_str) == Some(*kind)),
            "discrepancy kind {kind} exported"
        );
    }
    for name in [
        "seckill_channel_full_total",
        "seckill_writer_batch_retries_total",
    ] {
        assert!(m.has(name), "{name} exported before it happens");
    }

    // The build: version and the commit this binary was built from.
    let info = m
        .samples
        .iter()
        .find(|(n, _, _)| n == "seckill_build_info")
        .expect("seckill_build_info");
    assert_eq!(info.2, 1.0);
    assert_eq!(info.1["version"], env!("CARGO_PKG_VERSION"));
    let sha = &info.1["git_sha"];
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(sha, &head, "the commit under test"),
        None => assert_eq!(sha, "unknown"),
    }

    // One access-log line per request, with its id, route, status, latency.
    let log = rig.engines[0].log_text();
    let access: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "seckill::access")
        .collect();
    let line = access
        .iter()
        .find(|l| l["fields"]["request_id"] == "ops-test-401")
        .unwrap_or_else(|| panic!("no access line for ops-test-401 in:\n{log}"));
    let f = &line["fields"];
    assert_eq!(
        (
            f["method"].as_str(),
            f["route"].as_str(),
            f["status"].as_u64()
        ),
        (Some("POST"), Some(PURCHASE), Some(401))
    );
    assert!(f["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    let purchases = access
        .iter()
        .filter(|l| l["fields"]["route"] == PURCHASE)
        .count();
    assert_eq!(purchases, 7, "one line per purchase request");
    assert!(access.iter().all(|l| l["level"] == "INFO"
        && l["fields"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())));
    rig.finish().await;
}

/// Polls the engine's metrics until `check` holds (or panics after 15 s).
async fn eventually(
    rig: &Rig,
    engine: usize,
    what: &str,
    check: impl Fn(&crate::rig::Metrics) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = rig.metrics(engine).await;
        if check(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_the_oldest_pending_intent_and_one_engine_leads() {
    let mut rig = Rig::new("ledger-age").await;
    let fast = [
        ("SECKILL_RECONCILE_INTERVAL_MS", "200"),
        // Long enough that the reconciler leaves the stuck intents alone.
        ("SECKILL_RECONCILE_GRACE_MS", "60000"),
    ];
    rig.start_engine(&fast).await;
    rig.start_engine(&fast).await;
    let event = rig.open_sale(10, 10).await;
    let event_label = event.to_string();
    let ev = event_label.as_str();

    // Exactly one leader among the two engines.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (a, b) = (rig.metrics(0).await, rig.metrics(1).await);
        let leaders =
            a.value("seckill_reconcile_leader", &[]) + b.value("seckill_reconcile_leader", &[]);
        if leaders == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "one leader: got {leaders}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = if rig.metrics(0).await.value("seckill_reconcile_leader", &[]) == 1.0 {
        0
    } else {
        1
    };
    let now = chrono::Utc::now().timestamp() as f64;
    let last = rig
        .metrics(leader)
        .await
        .value("seckill_reconcile_last_success_timestamp_seconds", &[]);
    assert!((now - last).abs() < 10.0, "last pass {last}, now {now}");

    // Writers stuck on a locked wallets table: the intents stay pending in
    // the ledger and the leader's gauge shows them ageing.
    let mut blocker = sqlx::PgConnection::connect(&rig.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE wallets IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    assert_eq!(rig.buy(0, event, 1, 1).await, StatusCode::ACCEPTED);
    assert_eq!(rig.buy(1, event, 2, 2).await, StatusCode::ACCEPTED);
    eventually(
        &rig,
        leader,
        "two intents pending, the oldest over 1 s old",
        |m| {
            m.value("seckill_ledger_pending_intents", &[("event_id", ev)]) == 2.0
                && m.value(
                    "seckill_ledger_oldest_intent_age_seconds",
                    &[("event_id", ev)],
                ) >= 1.0
        },
    )
    .await;
    let follower = rig.metrics(1 - leader).await;
    assert_eq!(
        follower.value(
            "seckill_ledger_oldest_intent_age_seconds",
            &[("event_id", ev)]
        ),
        0.0,
        "only the leader reports ledger ages"
    );

    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    eventually(&rig, leader, "the ledger drained", |m| {
        m.value("seckill_ledger_pending_intents", &[("event_id", ev)]) == 0.0
            && m.value(
                "seckill_ledger_oldest_intent_age_seconds",
                &[("event_id", ev)],
            ) == 0.0
    })
    .await;

    // The leader dies: the other engine takes over within the lock's TTL.
    rig.engines[leader].kill9();
    eventually(&rig, 1 - leader, "the survivor leads", |m| {
        m.value("seckill_reconcile_leader", &[]) == 1.0
    })
    .await;
    rig.finish().await;
}
