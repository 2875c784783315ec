//! seckill: a flash-sale engine that sells exactly the stock, charges every
//! wallet once, and never loses a purchase it acknowledged.
//!
//! # Data flow
//!
//! ```text
//! shopper ─HTTP─> axum router ─ rate limits (global, per IP) ─ JWT ─ per-shopper limit
//!                    │            ─ event (cached) ─ body ─ Idempotency-Key claim
//!                    │
//!                    │ local "sold out" flag per event: once sold out, answer 409 here
//!                    ▼
//!             EVALSHA purchase.lua   one atomic step in Redis on the shopper's home
//!                    │               bucket's hash tag (an event has 1..=64 stock
//!                    │               buckets; home = user_id mod N): window, operator's
//!                    │               pause, per-user limit, stock, decrement, buyer
//!                    │               record, order intent in the bucket's ledger;
//!                    │               the attempts on a bucket that arrive while its
//!                    │               previous call is in Redis share the next call,
//!                    │               each decided as if alone
//!                    │
//!                    │ home bucket dry, others not: transfer.lua moves stock
//!                    │ ("out" on a donor, "in" on home, "done" on the donor;
//!                    │ the reconciler finishes one a crash cut), then buy again;
//!                    │ sold out only when every bucket is empty, none in flight
//!                    ▼
//!       202 Accepted {order_no, status: pending}       (SECKILL_ACK=durable: after the commit)
//!                    │
//!                    ▼
//!             async-channel (bounded) ──> N writer workers (batches)
//!                                             │ one Postgres transaction per batch:
//!                                             │ admission against the ledger, orders
//!                                             │ (ON CONFLICT order_no), versioned wallet
//!                                             │ debits (wallet ledger rows), payments,
//!                                             │ events.sold, the batch's outbox row;
//!                                             │ cannot pay → order failed
//!                                             ▼
//!                                  ack the ledger (confirmed) / release.lua (failed)
//!
//! outbox relay (one leader, Redis lock): the batch transaction also wrote an
//! outbox row naming its orders; the relay publishes one event per order
//! (order.confirmed / order.failed, read back from `orders`) to NATS
//! JetStream in id order, awaits the acks, stamps the rows published. It
//! yields to a crowd of purchases, within a bounded lag.
//!
//! The writers, the relay, the reconciler and the dashboard sampler run on a
//! runtime of their own threads, apart from the HTTP workers.
//!
//! reconciler (one leader, Redis lock): replays intents no writer persisted,
//! acks intents already in Postgres, finishes refunds whose units a crash
//! left unreturned, settles stock adjustments a crash left pending, lands
//! transfers between buckets a crash left in flight, repairs stock/buyer
//! drift with a compare-then-write script, rebuilds an event (or the
//! buckets of it) Redis lost.
//!
//! cancel / refund ─> one Postgres transaction (order FOR UPDATE, wallet
//!                    credit + ledger row, refunds row, order and payment
//!                    state, events.sold) ─> refund.lua: units back once
//!                    (the event's `returned` set) ─> stock-back pub/sub
//!
//! operator (lifecycle): end / pause write the sale's meta hash that
//! purchase.lua reads (decided in Redis: no purchase after the call on any
//! process); edits and stock adjustments are fenced steps on the event row.
//! ```
//!
//! The in-process channel dies with the process; the ledger entry written in
//! the same atomic step that took the stock does not, so a `kill -9` after a
//! 202 loses nothing: the reconciler persists the un-acked intent.
//!
//! # Layout
//!
//! Each module imports only modules listed below it (no cycles).
//!
//! - `main.rs`: the thin binary (`serve`, `migrate`, `token`, and the
//!   operator's commands in `operator_cli.rs`, which call the admin API
//!   through [`operator`], a client that never opens Redis or Postgres).
//! - [`startup`]: build → bind → serve → bounded graceful shutdown; the
//!   background tasks (stock-back watcher, housekeeping, outbox relay,
//!   dashboard sampler).
//! - [`http`]: the router, one module per resource ([`http::purchase`] is the
//!   hot path: gates, typed answers, the keyed flow), extractors that answer
//!   with the JSON error body, and the accept loop with its timeouts;
//!   [`http::openapi`]: the OpenAPI 3.1 document generated from the
//!   handlers' annotations and types (`GET /openapi.json`; `GET /docs`
//!   renders it, [`http::reference`]), held to every route of
//!   [`http::route_table`] by a test;
//!   [`http::access`] counts, times and logs every request outside all other
//!   layers, [`http::cors`] answers listed storefront origins.
//! - [`state`]: the shared `AppState`; [`error`]: `ApiError`, the one error
//!   type at the HTTP edge, which every layer's error maps into.
//! - [`reconciler`]: the leader-locked repair and replay loop, a struct with
//!   explicit dependencies; [`invariants`]: the SPEC §5 checker;
//!   [`outbox`]: the leader-locked relay of order events to NATS JetStream;
//!   [`dashboard`]: the 1 s samples and alerts of the live dashboard.
//! - [`refunds`]: a cancellation or refund exactly once (the transaction,
//!   then the units back in Redis; the reconciler's finishing step).
//! - [`catalog`]: cached events and the local sold-out flags;
//!   [`idempotency`]: Idempotency-Key records (Redis, and Postgres for keys
//!   that bought); [`drift`]: what Redis should hold and how far it is;
//!   [`loading`]: fenced preheat and rebuild of a sale in Redis;
//!   [`lifecycle`]: the operator's fenced changes to a sale (edit, pause,
//!   end now, stock adjustments applied once);
//!   [`writer`]: the channel, the batching workers, one batch's algorithm
//!   ([`writer::persist`]), its admission and its settlement in Redis.
//! - [`db`]: every Postgres query, one module per table, executor-generic;
//!   [`redis`]: a small handle, one typed wrapper per `lua/` script, the key
//!   builder (the only place key strings are built); no raw Redis command
//!   leaves it. [`ratelimit`] and [`telemetry`].
//! - [`intent`]: the order intent, its ledger format and how an order ended;
//!   [`config`]: typed settings; [`forwarded`]: the client behind trusted
//!   proxies; [`auth`]: tokens; [`bucket`]: an event's stock buckets and
//!   a shopper's home bucket. The bottom floor.

pub mod auth;
pub mod bucket;
pub mod catalog;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod drift;
pub mod error;
pub mod forwarded;
pub mod http;
pub mod idempotency;
pub mod intent;
pub mod invariants;
pub mod lifecycle;
pub mod loading;
pub mod operator;
pub mod outbox;
pub mod ratelimit;
pub mod reconciler;
pub mod redis;
pub mod refunds;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod writer;
