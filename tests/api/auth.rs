//! Shopper JWTs and the operator token.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN_TOKEN, JWT_SECRET};

fn token(alg: Algorithm, secret: &[u8], sub: &str, exp: i64) -> String {
    encode(
        &Header::new(alg),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_and_shoppers_stay_out_of_admin() {
    let app = spawn_app().await;
    let sale = app.open_sale(10, 100, 1).await;
    app.fund(1, 2, 10_000).await;
    let url = app.url(&format!("/api/events/{}/purchase", sale.id));
    let now = chrono::Utc::now().timestamp();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let unsigned = format!(
        "{none_header}.{}.",
        token(Algorithm::HS256, JWT_SECRET.as_bytes(), "1", now + 600)
            .split('.')
            .nth(1)
            .unwrap()
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not-a-jwt".into())),
        (
            "expired",
            Some(token(
                Algorithm::HS256,
                JWT_SECRET.as_bytes(),
                "1",
                now - 600,
            )),
        ),
        (
            "wrong secret",
            Some(token(
                Algorithm::HS256,
                b"another-secret-another-secret-another",
                "1",
                now + 600,
            )),
        ),
        ("alg none", Some(unsigned)),
        (
            "wrong algorithm",
            Some(token(
                Algorithm::HS512,
                JWT_SECRET.as_bytes(),
                "1",
                now + 600,
            )),
        ),
        (
            "non-numeric sub",
            Some(token(
                Algorithm::HS256,
                JWT_SECRET.as_bytes(),
                "alice",
                now + 600,
            )),
        ),
        (
            "zero sub",
            Some(token(
                Algorithm::HS256,
                JWT_SECRET.as_bytes(),
                "0",
                now + 600,
            )),
        ),
    ];
    for (case, tok) in cases {
        let mut req = app.http.post(&url).json(&json!({"quantity": 1}));
        if let Some(tok) = tok {
            req = req.bearer_auth(tok);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{case}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{case}");
    }
    assert_eq!(
        app.stock_left(sale.id).await,
        Some(10),
        "no bad token bought anything"
    );

    // A shopper token on an admin route is refused; no token is 401.
    let admin_view = format!("/admin/events/{}", sale.id);
    for (token, want) in [
        (Some(app.token(1)), StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
        (Some(format!("{ADMIN_TOKEN}x")), StatusCode::UNAUTHORIZED),
    ] {
        let status = app.get_as(&admin_view, token.as_deref()).await.status();
        assert_eq!(status, want, "{token:?}");
    }

    // Another user's order is a 404, pending or confirmed.
    let (_, body) = app.purchase(sale.id, 1, json!(1)).await;
    let order_no = body["order_no"].as_str().unwrap().to_string();
    let get = |user: i64| {
        app.http
            .get(app.url(&format!("/api/orders/{order_no}")))
            .bearer_auth(app.token(user))
            .send()
    };
    assert_eq!(get(2).await.unwrap().status(), StatusCode::NOT_FOUND);
    let mine: serde_json::Value = get(1).await.unwrap().json().await.unwrap();
    assert!(
        mine["status"] == "pending" || mine["status"] == "confirmed",
        "{mine}"
    );
    app.drain(sale.id).await;
    assert_eq!(get(2).await.unwrap().status(), StatusCode::NOT_FOUND);
    let mine: serde_json::Value = get(1).await.unwrap().json().await.unwrap();
    assert_eq!(mine["status"], "confirmed");
    assert_eq!(mine["user_id"], 1);
    for (user, orders) in [(1, 1), (2, 0)] {
        let token = app.token(user);
        let list: serde_json::Value = app
            .get_as("/api/me/orders", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list.as_array().unwrap().len(), orders, "user {user}");
    }
    app.cleanup().await;
}
