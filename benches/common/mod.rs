//! What the benches share: a database of their own, named after the bench
//! process, created fresh and dropped at the end. A bench never drops a
//! database it did not create.

use std::time::Duration;

use fred::prelude::*;
use sqlx::{Connection, Executor, PgConnection, PgPool};

fn admin_url() -> String {
    std::env::var("SECKILL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// This process's database: `seckill_bench_<tag>_<pid>`.
pub fn database_name(tag: &str) -> String {
    format!("seckill_bench_{tag}_{}", std::process::id())
}

pub fn database_url(tag: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin.rsplit_once('/').expect("database url has a path");
    format!("{base}/{}", database_name(tag))
}

/// Creates (or re-creates, within this process) the bench database, migrated.
pub async fn fresh_db(tag: &str, connections: u32) -> PgPool {
    let mut conn = PgConnection::connect(&admin_url())
        .await
        .expect("postgres reachable (make services)");
    let name = database_name(tag);
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap();
    let pool = seckill::db::connect(&database_url(tag), connections, Duration::from_secs(5))
        .await
        .unwrap();
    seckill::db::MIGRATOR.run(&pool).await.unwrap();
    pool
}

/// Drops this process's bench database, if it made one.
pub async fn drop_db(tag: &str) {
    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
        let name = database_name(tag);
        let _ = conn
            .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await;
    }
}

/// Deletes every Redis key under `prefix` with a plain client of the bench's
/// own (the engine's handle sends no raw commands).
pub async fn forget_redis_keys(url: &str, prefix: &str) {
    let client = Builder::from_config(Config::from_url(url).expect("redis url"))
        .build()
        .expect("redis client");
    client.init().await.expect("redis reachable");
    let keys: Vec<String> = client
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}:*")])
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = client.del(keys).await;
    }
    let _ = client.quit().await;
}
