//! The OpenAPI document against the router: every route served is
//! documented with exactly the methods it answers, and the served document
//! is the one the code generates.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use utoipa::OpenApi;

use crate::helpers::spawn_app;

/// path → methods, as the document lists them.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc: Value = serde_json::from_str(seckill::http::openapi::json()).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&k.as_str())
                })
                .map(|k| k.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

#[test]
fn every_registered_path_is_documented_and_nothing_else() {
    let registered: BTreeSet<String> = seckill::http::routes().paths().map(str::to_owned).collect();
    let documented: BTreeSet<String> = documented().into_keys().collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "routes served but not in the OpenAPI document (add #[utoipa::path] and list it in http::openapi::ApiDoc): {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "paths documented but not served: {phantom:?}"
    );
}

#[test]
fn every_operation_is_described_with_its_errors_and_security() {
    let doc: Value = serde_json::from_str(seckill::http::openapi::json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{id}: no success response"
            );
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let ok = schema == "#/components/schemas/ErrorBody"
                        || (path == "/readyz" && schema == "#/components/schemas/Readiness");
                    assert!(ok, "{id} {status}: not the error body");
                }
            }
            let security = op["security"].as_array();
            for requirement in security.into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{id}: unknown scheme {name}");
                }
            }
            let authenticated = security.is_some_and(|s| !s.is_empty());
            let expected = (path.starts_with("/admin") && path != "/admin/dashboard")
                || (path.starts_with("/api") && path != "/api/events/{id}");
            assert_eq!(authenticated, expected, "{id}: security requirement");
            if authenticated {
                assert!(responses.contains_key("401"), "{id}: no 401");
            }
        }
    }
    // The error body names every code the engine can send.
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "sold_out",
        "limit_exceeded",
        "idempotency_key_reused",
        "rate_limited",
    ] {
        assert!(
            codes.as_array().unwrap().iter().any(|c| c == code),
            "{code}"
        );
    }
}

/// What each registered path answers, asked of the running router: a method
/// no route has is answered 405 with `Allow` naming the methods the path has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_methods_are_the_methods_served() {
    let app = spawn_app().await;
    let documented = documented();
    let trace = Method::from_bytes(b"TRACE").unwrap();
    for path in seckill::http::routes().paths() {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let response = app
            .http
            .request(trace.clone(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let served: BTreeSet<String> = response
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{path}: no Allow header"))
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(Some(&served), documented.get(path), "{path}: methods");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_generated_one() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, seckill::http::openapi::document_value());
    // What the code declares, links spelled as OpenAPI wants them.
    let declared = serde_json::to_value(seckill::http::openapi::ApiDoc::openapi()).unwrap();
    assert_eq!(
        served["paths"].as_object().unwrap().len(),
        declared["paths"].as_object().unwrap().len()
    );
    let links = &served["paths"]["/admin/events"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["Preheat"]["operationId"], "preheat", "{links}");
    assert!(links["Preheat"].get("operation_id").is_none());
    app.cleanup().await;
}

#[test]
fn the_reference_page_shows_every_operation_and_schema_and_loads_nothing() {
    let doc = seckill::http::openapi::document_value();
    let page = seckill::http::reference::render(&doc);
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap();
            assert!(page.contains(&format!("id=\"op-{id}\"")), "{id}");
        }
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(page.contains(&format!("id=\"schema-{name}\"")), "{name}");
    }
    assert!(
        !page.contains("<script") && !page.contains("src="),
        "loads nothing"
    );
}
