//! The operator's commands in the `seckill` binary, run as an operator would,
//! against an engine with real Redis and Postgres.

use serde_json::Value;

use crate::helpers::{spawn_app, TestApp, ADMIN_TOKEN};

/// Runs `seckill <args>` against the app; (exit ok, stdout, stderr).
async fn seckill(app: &TestApp, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args(args)
        .env("SECKILL_URL", &app.base)
        .env("SECKILL_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("run seckill");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_sale_from_the_command_line() {
    let app = spawn_app().await;

    let (ok, out, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "event",
            "create",
            "--name",
            "cli sale",
            "--price",
            "250",
            "--stock",
            "7",
            "--limit",
            "2",
            "--starts-at",
            "now",
            "--ends-at",
            "+1h",
            "--buckets",
            "2",
            "--preheat",
        ],
    )
    .await;
    assert!(ok, "create: {err}");
    let created: Value = serde_json::from_str(&out).expect("create prints the event as JSON");
    let id = created["id"].as_i64().expect("an id");
    assert_eq!(created["stock_total"], 7);
    assert_eq!(created["stock_buckets"], 2);
    let shares: Vec<i64> = created["buckets"]
        .as_array()
        .expect("the buckets")
        .iter()
        .map(|b| b["stock_left"].as_i64().unwrap())
        .collect();
    assert_eq!(shares, vec![4, 3], "--buckets 2 splits the stock");
    assert_eq!(created["preheated"], true, "--preheat loads it");
    assert_eq!(app.stock_left(id).await, Some(7));

    // 25 000 wallets go in chunks, with the progress on stderr.
    let (ok, out, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "wallets",
            "seed",
            "--first",
            "1",
            "--count",
            "25000",
            "--balance",
            "1000",
        ],
    )
    .await;
    assert!(ok, "seed: {err}");
    assert!(out.contains("25000 wallets set to 1000"), "{out}");
    let (wallets, sum): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(balance)::bigint FROM wallets")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((wallets, sum), (25_000, Some(25_000_000)));
    let (ok, out, _) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "wallets",
            "seed",
            "--first",
            "24991",
            "--count",
            "20",
            "--balance",
            "5",
        ],
    )
    .await;
    assert!(ok);
    assert!(out.contains("20 wallets set to 5"), "{out}");
    let (wallets, sum): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(balance)::bigint FROM wallets")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((wallets, sum), (25_010, Some(24_990 * 1000 + 20 * 5)));

    for user in 1..=3 {
        app.purchase(id, user, serde_json::json!(1)).await;
    }
    app.drain(id).await;
    let (ok, out, err) = seckill(&app, ADMIN_TOKEN, &["event", "show", &id.to_string()]).await;
    assert!(ok, "show: {err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["sold"].as_i64(), shown["stock_left"].as_i64()),
        (Some(3), Some(4))
    );

    // A second sale, not started: the list walks every page and filters.
    let (ok, _, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "event",
            "create",
            "--name",
            "later sale",
            "--price",
            "5",
            "--stock",
            "3",
            "--starts-at",
            "+1h",
            "--ends-at",
            "+2h",
        ],
    )
    .await;
    assert!(ok, "create: {err}");
    let (ok, out, err) = seckill(&app, ADMIN_TOKEN, &["event", "list"]).await;
    assert!(ok, "list: {err}");
    assert_eq!(out.lines().count(), 3, "a header and two events: {out}");
    assert!(
        out.contains("cli sale") && out.contains("later sale"),
        "{out}"
    );
    let (ok, out, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &["event", "list", "--status", "scheduled", "--json"],
    )
    .await;
    assert!(ok, "list: {err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["name"], "later sale");

    let (ok, out, err) = seckill(&app, ADMIN_TOKEN, &["reconcile"]).await;
    assert!(ok, "reconcile: {err}");
    let report: Value = serde_json::from_str(&out).expect("the report as JSON");
    assert!(report.is_object(), "{out}");

    let (ok, out, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &["event", "preheat", &id.to_string(), "--force"],
    )
    .await;
    assert!(ok, "rebuild: {err}");
    let rebuilt: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (rebuilt["rebuilt"].as_bool(), rebuilt["stock_left"].as_i64()),
        (Some(true), Some(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_the_engines_refusals_and_exits_non_zero() {
    let app = spawn_app().await;
    let (ok, _, err) = seckill(&app, "not-the-token", &["event", "show", "1"]).await;
    assert!(!ok);
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");

    let (ok, _, err) = seckill(&app, ADMIN_TOKEN, &["event", "show", "999999"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");

    let (ok, _, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "event",
            "create",
            "--name",
            "x",
            "--price",
            "1",
            "--stock",
            "1",
            "--starts-at",
            "+1h",
            "--ends-at",
            "+1m",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("422") && err.contains("ends_at"), "{err}");

    let (ok, _, err) = seckill(
        &app,
        ADMIN_TOKEN,
        &[
            "event",
            "create",
            "--name",
            "x",
            "--price",
            "1",
            "--stock",
            "1",
            "--starts-at",
            "soon",
            "--ends-at",
            "+1m",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0, "nothing created by a refused command");
}
