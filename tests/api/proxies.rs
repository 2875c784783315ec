//! Behind a balancer: the per-IP limit keys on the client a trusted proxy
//! names, never on what an untrusted peer claims; CORS only for the
//! configured storefront origins.

use reqwest::{Method, StatusCode};

use crate::helpers::{spawn_app_with, TestApp};

/// Purchase attempts of an event that does not exist: the per-IP limit is
/// checked before the event is looked up, so each answer is 404 (within
/// the budget) or 429 (over it), and nothing is bought.
async fn statuses_as(app: &TestApp, headers: &[(&str, &str)], n: usize) -> (usize, usize) {
    let (mut allowed, mut limited) = (0, 0);
    for _ in 0..n {
        let mut request = app
            .http
            .post(app.url("/api/events/999999/purchase"))
            .header("content-type", "application/json")
            .body(r#"{"quantity":1}"#);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match request.send().await.unwrap().status() {
            StatusCode::NOT_FOUND => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (allowed, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_clients_get_their_own_budget_only_through_a_trusted_peer() {
    let app = spawn_app_with(&[
        ("SECKILL_RATE_IP_RPS", "1"),
        ("SECKILL_RATE_IP_BURST", "3"),
        ("SECKILL_TRUSTED_PROXIES", "127.0.0.0/8"),
    ])
    .await;
    // Two shoppers behind the (trusted, loopback) balancer: a budget each.
    let a = [("x-forwarded-for", "198.51.100.1")];
    let b = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(statuses_as(&app, &a, 5).await, (3, 2));
    assert_eq!(statuses_as(&app, &b, 5).await, (3, 2));
    // A forged left-most entry does not buy shopper A a fresh budget: the
    // right-most untrusted hop is what counts.
    let forged = [("x-forwarded-for", "203.0.113.77, 198.51.100.1")];
    assert_eq!(statuses_as(&app, &forged, 2).await, (0, 2));
    // RFC 7239 Forwarded works the same way.
    let c = [("forwarded", r#"for="[2001:db8::5]:443";proto=https"#)];
    assert_eq!(statuses_as(&app, &c, 4).await, (3, 1));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = spawn_app_with(&[
        ("SECKILL_RATE_IP_RPS", "1"),
        ("SECKILL_RATE_IP_BURST", "3"),
        ("SECKILL_TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .await;
    // The test's own connection (127.0.0.1) is not a trusted proxy: every
    // claimed client shares the peer's budget.
    let a = [("x-forwarded-for", "198.51.100.1")];
    let b = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(statuses_as(&app, &a, 2).await, (2, 0));
    assert_eq!(statuses_as(&app, &b, 3).await, (1, 2));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_listed_origins_only() {
    let shop = "https://shop.example.com";
    let app = spawn_app_with(&[(
        "SECKILL_CORS_ORIGINS",
        "https://shop.example.com, http://localhost:3000",
    )])
    .await;
    let sale = app.open_sale(5, 100, 1).await;
    let purchase = app.url(&format!("/api/events/{}/purchase", sale.id));
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, &purchase)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };

    let ok = preflight(shop).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], shop);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("idempotency-key"),
        "{allowed}"
    );

    let foreign = preflight("https://evil.example.net").await.unwrap();
    let leaked: Vec<_> = foreign
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "no CORS header for a foreign origin: {leaked:?}"
    );

    // A real request: the listed origin may read the answer (an error
    // included) and the request id; a foreign one gets nothing.
    let r = app
        .http
        .post(&purchase)
        .header("origin", shop)
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["access-control-allow-origin"], shop);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let r = app
        .http
        .get(app.url(&format!("/api/events/{}", sale.id)))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    app.cleanup().await;
}
