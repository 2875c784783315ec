//! What the access layer (HTTP metrics + access log decision) costs per
//! request: the same router with a trivial handler, driven in-process
//! through `tower::ServiceExt::oneshot`, without the layer and with it
//! (`SECKILL_ACCESS_LOG=off` and the default `sample:100`; no subscriber is
//! installed, so a sampled line costs only its field capture). The
//! Prometheus recorder is the engine's. Prints ns per request, per round
//! and the best round of each case.
//!
//! `cargo bench --bench http_access`

use std::{num::NonZeroU64, time::Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::post,
    Router,
};
use seckill::{config::AccessLog, http::access::AccessLayer};
use tower::{ServiceBuilder, ServiceExt};

const REQUESTS: u32 = 300_000;

/// The engine applies its layers with one `Router::layer` (one boxing per
/// route); both cases pay that, so the difference is the access layer alone.
fn router(layer: Option<AccessLayer>) -> Router {
    Router::new()
        .route(
            "/api/events/{id}/purchase",
            post(|| async { StatusCode::ACCEPTED }),
        )
        .layer(
            ServiceBuilder::new()
                .option_layer(layer)
                .map_response(IntoResponse::into_response),
        )
}

async fn ns_per_request(router: &Router) -> f64 {
    let request = || {
        Request::post("/api/events/7/purchase")
            .header("x-request-id", "0190b6c2-0000-7000-8000-000000000000")
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..20_000 {
        let _ = router.clone().oneshot(request()).await;
    }
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let response = router.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    started.elapsed().as_nanos() as f64 / REQUESTS as f64
}

fn main() {
    let _handle = seckill::telemetry::metrics_handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cases = [
            ("no access layer", router(None)),
            (
                "access layer, log off",
                router(Some(AccessLayer::new(AccessLog::Off))),
            ),
            (
                "access layer, log sample:100",
                router(Some(AccessLayer::new(AccessLog::Sample(
                    NonZeroU64::new(100).unwrap(),
                )))),
            ),
        ];
        // Interleaved rounds; on a shared machine the fastest round of each
        // case is the least disturbed one, so that is what is compared.
        let mut best = [f64::MAX; 3];
        for round in 1..=5 {
            for (i, (name, router)) in cases.iter().enumerate() {
                let ns = ns_per_request(router).await;
                best[i] = best[i].min(ns);
                println!("round {round}: {name:<30} {ns:>7.0} ns/request");
            }
        }
        for (i, (name, _)) in cases.iter().enumerate() {
            println!(
                "best: {name:<30} {:>7.0} ns/request (+{:.0} ns)",
                best[i],
                best[i] - best[0]
            );
        }
    });
}
