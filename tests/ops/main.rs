//! What operators see: HTTP metrics and access logs, the reconciler's
//! gauges, alert rules and dashboards that name only metrics the engine
//! exports, and two engines behind HAProxy. Every test runs real
//! `seckill serve` processes against the Redis and Postgres of `make test`.

mod balancer;
mod metrics;
mod rig;
mod rules;
