//! Integration tests against real Redis and Postgres (one binary, modules
//! per concern). `make test` brings both up.

mod auth;
mod bad_input;
mod bench_script;
mod buckets;
mod cli;
mod cluster;
mod connections;
mod dashboard;
mod durable_ack;
mod event_page;
mod exactness;
mod fuzz_findings;
mod helpers;
mod idempotency;
mod lifecycle;
mod model;
mod openapi;
mod operator_orders;
mod ops;
mod outbox;
#[path = "../common/ports.rs"]
mod ports;
mod proxies;
mod purchase;
mod ratelimit;
mod reconcile;
mod refunds;
mod scripts;
mod writer;
