//! Postgres: the source of truth for orders and money.
//!
//! Every query of the engine lives here, grouped by table. Each function
//! takes any executor (a pool, a connection or a transaction), so the writer
//! composes them into one transaction per batch.

pub mod adjustments;
pub mod checks;
pub mod events;
pub mod idempotency;
pub mod money;
pub mod orders;
pub mod outbox;
pub mod reconcile;
pub mod refunds;
pub mod wallets;

use std::time::Duration;

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A Postgres failure; answers 503 at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("postgres: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("gave up after {0} optimistic-lock conflicts in one batch")]
    TooManyConflicts(u32),
    /// A statement shared by several requests failed (each gets this copy).
    #[error("postgres (shared batch): {0}")]
    Batch(String),
    /// A writer batch names an event Postgres does not have (what the
    /// foreign key on orders.event_id used to refuse).
    #[error("no event {0}")]
    UnknownEvent(i64),
}

impl DbError {
    /// Worth retrying the whole transaction: lost connection, deadlock,
    /// serialization failure, pool timeout.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::TooManyConflicts(_) | DbError::Batch(_) => true,
            DbError::UnknownEvent(_) => false,
            DbError::Sqlx(err) => match err {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                // 23514: `events.sold <= stock_total` met by two writers that
                // planned against the same `sold`; the retry reads it anew.
                sqlx::Error::Database(db) => matches!(
                    db.code().as_deref(),
                    Some(
                        "23514"
                            | "40001"
                            | "40P01"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "08000"
                            | "08003"
                            | "08006"
                    )
                ),
                _ => false,
            },
        }
    }
}

/// Connects, retrying until `connect_for` has passed.
pub async fn connect(
    url: &str,
    max_connections: u32,
    connect_for: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("seckill");
    let deadline = tokio::time::Instant::now() + connect_for;
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Migrations embedded in this binary that the database has not applied.
pub async fn missing_migrations(pool: &PgPool) -> usize {
    let applied: Vec<i64> =
        sqlx::query_as::<_, (i64,)>("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .map(|rows| rows.into_iter().map(|(v,)| v).collect())
            .unwrap_or_default();
    MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count()
}

pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
