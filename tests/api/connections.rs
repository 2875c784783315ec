//! Slow and idle clients, graceful shutdown with a deadline, and `/readyz`
//! while draining. Raw sockets, so nothing is hidden by a client library.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{spawn_app_with, ADMIN_TOKEN};

async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect to the engine")
}

/// Reads until the server closes the connection or `within` passes; returns
/// what arrived and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// An operator request whose body stops after a few bytes.
fn half_a_body(path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: seckill\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"count\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_its_deadline_even_with_a_client_trickling_a_body() {
    // The body timeout is long: only the shutdown deadline can end it.
    let mut app = spawn_app_with(&[
        ("SECKILL_SHUTDOWN_GRACE_MS", "1500"),
        ("SECKILL_BODY_TIMEOUT_MS", "60000"),
        ("SECKILL_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    let mut slow = connect(&app.base).await;
    slow.write_all(half_a_body("/admin/wallets/seed").as_bytes())
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // One byte every 200 ms: never done, never idle.
        for _ in 0..300 {
            if slow.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let asked = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    let took = asked.elapsed();
    trickle.abort();
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "shutdown did not finish: {stopped:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} (grace 1.5 s)"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_off_and_slow_bodies_answered_408() {
    let app = spawn_app_with(&[
        ("SECKILL_HEADER_TIMEOUT_MS", "300"),
        ("SECKILL_BODY_TIMEOUT_MS", "300"),
    ])
    .await;
    // Half a request head, then nothing: the connection is closed.
    let mut head = connect(&app.base).await;
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: sec")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut head, Duration::from_secs(5)).await;
    assert!(closed, "a slow head keeps its connection");
    assert!(started.elapsed() < Duration::from_secs(2));

    // An idle keep-alive connection is closed the same way.
    let mut idle = connect(&app.base).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: seckill\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle connection is not kept forever");

    // A whole head, half a body: 408 with the JSON error body.
    let mut body = connect(&app.base).await;
    body.write_all(half_a_body("/admin/wallets/seed").as_bytes())
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut body, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_from_the_moment_draining_starts() {
    let mut app = spawn_app_with(&[("SECKILL_SHUTDOWN_READY_DELAY_MS", "1500")]).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let shutdown = app.shutdown.clone();
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still serving, but telling the balancer to stop sending.
    let draining = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = draining.json().await.unwrap();
    assert_eq!(body["draining"], true, "{body}");
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "requests are still served");
    app.stop().await.expect("clean stop");
    app.cleanup().await;
}
