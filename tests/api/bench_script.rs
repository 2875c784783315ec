//! `make bench` (scripts/bench.sh) makes its own database and drops only that.

use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::helpers::admin_db_url;

async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&admin_db_url()).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_never_drops_a_database_it_did_not_create() {
    let sentinel = format!("seckill_sentinel_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_db_url()).await.unwrap();
    admin
        .execute(format!(r#"CREATE DATABASE "{sentinel}""#).as_str())
        .await
        .unwrap();
    let (server, _) = admin_db_url()
        .rsplit_once('/')
        .map(|(s, d)| (s.to_string(), d.to_string()))
        .unwrap();

    let out =
        tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh"))
            .env("BENCH_PARTS", "none")
            .env("SECKILL_DATABASE_URL", format!("{server}/{sentinel}"))
            .env("SECKILL_TEST_DATABASE_URL", admin_db_url())
            .output()
            .await
            .expect("run scripts/bench.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(
        database_exists(&sentinel).await,
        "the database named in SECKILL_DATABASE_URL survives: {log}"
    );
    let own = log
        .lines()
        .find_map(|l| l.strip_prefix("bench: created its own database '"))
        .and_then(|rest| rest.strip_suffix('\''))
        .unwrap_or_else(|| panic!("the bench names its own database: {log}"))
        .to_string();
    assert_ne!(own, sentinel);
    assert!(
        !database_exists(&own).await,
        "its own database is dropped: {log}"
    );

    admin
        .execute(format!(r#"DROP DATABASE "{sentinel}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
}
