//! seckill: a flash-sale engine that sells exactly the stock, charges every
//! wallet once, and never loses a purchase it acknowledged.
//!
//! # Data flow
//!
//! ```text
//! shopper ─HTTP─> axum router ─ rate limit (governor) ─ auth (JWT) ─ validate
//!                    │
//!                    │ local "sold out" flag per event: once sold out, answer 409 here
//!                    ▼
//!             EVALSHA purchase.lua   one atomic step in Redis on the event's hash tag:
//!                    │               window, per-user limit, stock, decrement, buyer
//!                    │               record, order intent in the event's ledger
//!                    ▼
//!       202 Accepted {order_no, status: pending}
//!                    │
//!                    ▼
//!             async-channel (bounded) ──> N writer workers (batches)
//!                                             │ one Postgres transaction per batch:
//!                                             │ orders (ON CONFLICT order_no), versioned
//!                                             │ wallet debits, payments, events.sold;
//!                                             │ cannot pay → order failed
//!                                             ▼
//!                                  ack the ledger (confirmed) / release.lua (failed)
//!
//! reconciler (one leader, Redis lock): replays intents no writer persisted,
//! acks intents already in Postgres, repairs stock/buyer drift with a
//! compare-then-write script, rebuilds an event Redis lost.
//! ```
//!
//! The in-process channel dies with the process; the ledger entry written in
//! the same atomic step that took the stock does not, so a `kill -9` after a
//! 202 loses nothing: the reconciler persists the un-acked intent.
//!
//! # Layout
//!
//! - [`config`]: typed settings from `SECKILL_*` variables, validated at start.
//! - [`telemetry`]: tracing subscriber and the Prometheus recorder.
//! - [`startup`]: build → bind → serve → ordered graceful shutdown.
//! - [`state`]: the shared `AppState`.
//! - [`http`]: routes, one module per resource, extractors; [`error`] maps
//!   every failure to the JSON error body.
//! - [`auth`], [`ratelimit`], [`idempotency`]: the gates in front of a purchase.
//! - [`catalog`]: cached events and the local sold-out flags.
//! - [`redis`]: keys (the only place key strings are built) and one wrapper per
//!   `lua/` script.
//! - [`db`]: Postgres queries and the embedded migrations.
//! - [`writer`]: the channel and the batching workers ([`writer::persist`]).
//! - [`reconciler`]: leader-locked repair and replay.
//! - [`invariants`]: the SPEC §5 checker used by the admin API, tests and load tests.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod db;
pub mod drift;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod intent;
pub mod invariants;
pub mod loading;
pub mod ratelimit;
pub mod reconciler;
pub mod redis;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod writer;
