//! The OpenAPI 3.1 document, generated from the code: every handler carries
//! its `#[utoipa::path]` (method, path, parameters, body, each status it
//! answers), the request and response types derive `ToSchema`, and this
//! module gathers them with the two security schemes. Served at
//! `GET /openapi.json`; `tests/api/openapi.rs` holds it to the router.

use std::sync::OnceLock;

use axum::{http::header, response::IntoResponse};
use serde_json::Value;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{
    admin, dashboard, events, lifecycle, operator_orders, ops, orders, purchase, refunds, wallets,
};

/// The document. A route added to [`super::routes`] must be listed here too.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "seckill",
        description = "A flash-sale engine: sells exactly the stock, charges every wallet once, \
                       loses no acknowledged purchase. Money is in integer minor units; every \
                       error is `{\"error\": code, \"message\": text}`."
    ),
    paths(
        events::show,
        purchase::purchase,
        orders::show,
        orders::mine,
        refunds::cancel,
        admin::create_event,
        lifecycle::list,
        admin::show_event,
        lifecycle::edit,
        lifecycle::end,
        lifecycle::pause,
        lifecycle::resume,
        lifecycle::adjust_stock,
        admin::preheat,
        admin::invariants,
        admin::seed_wallets,
        admin::set_wallet,
        admin::show_wallet,
        wallets::credit,
        wallets::ledger,
        operator_orders::list,
        refunds::refund,
        operator_orders::export,
        admin::reconcile,
        dashboard::page,
        dashboard::data,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
        super::reference::page,
    ),
    components(schemas(crate::error::ErrorCode)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "shopper", description = "Shoppers' routes (`shopper_jwt`, except the event page)"),
        (name = "operator", description = "Operators' routes (`admin_token`)"),
        (name = "ops", description = "Probes, metrics and this document (no auth)"),
    )
)]
pub struct ApiDoc;

/// Both read `Authorization: Bearer <token>` (see `http::extract`).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SHOPPER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A shopper's HS256 JWT: `sub` is the user id as a string, `exp` required",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            OPERATOR,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "SECKILL_ADMIN_TOKEN; a valid shopper token on an operator route is 403",
                    ))
                    .build(),
            ),
        );
    }
}

/// The security scheme names the handlers' annotations use.
pub const SHOPPER: &str = "shopper_jwt";
pub const OPERATOR: &str = "admin_token";

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document_value().to_string())
}

/// The document as a JSON value, links spelled as OpenAPI spells them.
pub fn document_value() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let operations = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let responses = operation["responses"].as_object_mut().into_iter().flatten();
        for (_, response) in responses {
            let links = response.get_mut("links").and_then(Value::as_object_mut);
            for link in links.into_iter().flat_map(|l| l.values_mut()) {
                camel_case_link(link);
            }
        }
    }
    doc
}

/// utoipa 5 writes a Link's fields in snake case (`operation_id`); OpenAPI
/// and the tools reading it (schemathesis) want `operationId`.
fn camel_case_link(link: &mut Value) {
    let Some(link) = link.as_object_mut() else {
        return;
    };
    for (snake, camel) in [
        ("operation_id", "operationId"),
        ("operation_ref", "operationRef"),
        ("request_body", "requestBody"),
    ] {
        if let Some(value) = link.remove(snake) {
            link.insert(camel.into(), value);
        }
    }
}

#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "ops",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)),
)]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
