//! What operators see: HTTP metrics and access logs, the reconciler's
//! gauges, alert rules and dashboards that name only metrics the engine
//! exports, two engines behind HAProxy, and a sale on a Redis Cluster of
//! three primaries with replicas (one of them killed mid-sale). Every test
//! runs real `seckill serve` processes against the Postgres of `make test`
//! (and its Redis, or a cluster of its own).

mod balancer;
mod metrics;
mod multi_master;
#[path = "../common/ports.rs"]
mod ports;
mod redis_cluster;
mod rig;
mod rules;
