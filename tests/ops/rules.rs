//! The alert rules and the Grafana dashboard name only metrics the engine
//! exports: after a small sale and a reconciler pass, every `seckill_*`
//! name in `ops/prometheus/alerts.yml` and `ops/grafana/dashboards/*.json`
//! is a series in the engine's `/metrics`. (promtool checks the rules'
//! syntax and behaviour: `scripts/promtool.sh`, run by `make test`.)

use std::{collections::BTreeSet, path::Path, time::Duration};

use reqwest::StatusCode;

use crate::rig::Rig;

/// Metrics another part of the engine exports (the order-event outbox);
/// named by the rules ahead of it. Skipped only while absent.
const FROM_THE_OUTBOX: &[&str] = &["seckill_outbox_lag_seconds", "seckill_outbox_backlog"];

/// Every `seckill_*` identifier in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("seckill_") {
        let start = i + at;
        let word_start =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if word_start {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn files_naming_metrics() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
    let mut files = vec![
        root.join("prometheus/alerts.yml"),
        root.join("prometheus/alerts_test.yml"),
    ];
    let dashboards = std::fs::read_dir(root.join("grafana/dashboards")).expect("dashboards dir");
    files.extend(
        dashboards
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json")),
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboards_name_only_exported_metrics() {
    let mut rig = Rig::new("rules").await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "200")])
        .await;
    let event = rig.open_sale(5, 5).await;
    for user in 1..=5 {
        assert_eq!(rig.buy(0, event, user, 1).await, StatusCode::ACCEPTED);
    }
    assert_eq!(
        rig.buy(0, event, 5, 1).await,
        StatusCode::CONFLICT,
        "sold out"
    );
    // A reconciler pass that saw the event: its histogram and ledger gauges.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let m = rig.metrics(0).await;
        if m.value("seckill_reconcile_runs_total", &[]) >= 2.0
            && m.has("seckill_ledger_pending_intents")
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no reconciler pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut checked = 0;
    let mut missing = Vec::new();
    for file in files_naming_metrics() {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in metric_names(&text) {
            checked += 1;
            // Outbox names are skipped only while this engine lacks them.
            let awaited = FROM_THE_OUTBOX.contains(&name.as_str());
            if !metrics.has(&name) && !awaited {
                missing.push(format!("{name} (in {})", file.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} names found: is the pattern right?"
    );
    assert!(
        missing.is_empty(),
        "named by ops files but not exported by the engine:\n{}",
        missing.join("\n")
    );
    rig.finish().await;
}

#[test]
fn metric_names_are_whole_identifiers() {
    let names = metric_names(
        r#"rate(seckill_http_requests_total{route="x"}[1m]) / xseckill_no, seckill_purchase_seconds_bucket"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "seckill_http_requests_total",
            "seckill_purchase_seconds_bucket"
        ]
    );
}

/// The dashboard Grafana loads is the one `dashboard.py` writes, every panel
/// queries the provisioned datasource, and every query is non-empty.
#[test]
fn the_dashboard_is_generated_and_uses_the_provisioned_datasource() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/grafana");
    let committed = std::fs::read_to_string(root.join("dashboards/seckill.json")).unwrap();
    let regenerated =
        std::env::temp_dir().join(format!("seckill-dashboard-{}.json", std::process::id()));
    let run = std::process::Command::new("python3")
        .arg(root.join("dashboard.py"))
        .arg(&regenerated)
        .output()
        .expect("python3 runs ops/grafana/dashboard.py");
    assert!(run.status.success(), "{run:?}");
    let fresh = std::fs::read_to_string(&regenerated).unwrap();
    let _ = std::fs::remove_file(&regenerated);
    assert!(
        fresh == committed,
        "ops/grafana/dashboards/seckill.json is stale: run python3 ops/grafana/dashboard.py"
    );

    let provisioning =
        std::fs::read_to_string(root.join("provisioning/datasources/prometheus.yml")).unwrap();
    assert!(provisioning.contains("uid: prometheus"), "{provisioning}");
    let dashboard: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "prometheus");
            assert!(target["expr"]
                .as_str()
                .is_some_and(|e| e.contains("seckill_")));
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}
