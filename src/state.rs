//! The application state every handler shares: built once, cheap to clone.

use std::{ops::Deref, sync::Arc};

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::{
    auth::Auth, catalog::Catalog, config::Settings, idempotency::DurableKeys,
    ratelimit::RateLimits, reconciler::Reconciler, redis::Redis, writer::WriterQueue,
};

pub struct App {
    pub settings: Settings,
    pub db: PgPool,
    pub redis: Redis,
    pub catalog: Catalog,
    pub limits: RateLimits,
    pub auth: Auth,
    pub writers: WriterQueue,
    /// Idempotency-Key records in Postgres, in shared statements.
    pub durable_keys: DurableKeys,
    pub metrics: PrometheusHandle,
    pub reconciler: Arc<Reconciler>,
    /// The outbox relay's last measure of what it owes NATS.
    pub outbox: Arc<crate::outbox::Backlog>,
    /// Purchase requests answered, for the relay to yield to a crowd.
    pub crowd: Arc<crate::outbox::Crowd>,
    /// The live dashboard's samples, shared by every open tab.
    pub dashboard: Arc<crate::dashboard::Samples>,
    /// A unique name for this process (reconciler lock holder, logs).
    pub instance: String,
    /// Set when graceful shutdown starts: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}
