//! Logs (tracing, pretty or JSON) and metrics (the `metrics` facade rendered
//! in Prometheus text format by `/metrics`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Installs the global tracing subscriber; later calls are no-ops.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,fred=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
}

/// The process-wide Prometheus recorder. Installed once: several apps in
/// one test process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("seckill_purchase_seconds".into()),
                    &[
                        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("seckill_writer_batch_size".into()),
                        &[1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("seckill_http_request_duration_seconds".into()),
                        HTTP_DURATION_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("seckill_reconcile_pass_seconds".into()),
                        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                    )
                })
                .expect("static bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); render ours anyway.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            announce();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!("seckill_purchases_total", "Purchase attempts by outcome");
    metrics::describe_histogram!("seckill_purchase_seconds", "Purchase handler latency");
    metrics::describe_gauge!(
        "seckill_channel_depth",
        "Intents waiting in the writer channel"
    );
    metrics::describe_histogram!("seckill_writer_batch_size", "Intents per writer batch");
    metrics::describe_counter!(
        "seckill_orders_persisted_total",
        "Orders written to Postgres by status"
    );
    metrics::describe_counter!(
        "seckill_version_conflicts_total",
        "Optimistic-lock conflicts retried"
    );
    metrics::describe_counter!(
        "seckill_writer_batch_retries_total",
        "Writer batches retried after a Postgres error"
    );
    metrics::describe_counter!(
        "seckill_channel_full_total",
        "Accepted purchases left to the ledger replay because the channel was full"
    );
    metrics::describe_counter!(
        "seckill_reconcile_discrepancies_total",
        "Discrepancies found by the reconciler by kind"
    );
    metrics::describe_counter!(
        "seckill_reconcile_replayed_total",
        "Ledger intents persisted by the reconciler"
    );
    metrics::describe_counter!(
        "seckill_http_requests_total",
        "HTTP requests by route template (or unmatched), method and status, rejections included"
    );
    metrics::describe_histogram!(
        "seckill_http_request_duration_seconds",
        "HTTP request latency until the response head, by route template"
    );
    metrics::describe_gauge!(
        "seckill_build_info",
        "Always 1; the version and git commit of the running binary"
    );
    metrics::describe_gauge!(
        "seckill_reconcile_leader",
        "1 while this process holds the reconciler leader lock"
    );
    metrics::describe_gauge!(
        "seckill_reconcile_last_success_timestamp_seconds",
        "Unix time the last reconciler pass of this process finished"
    );
    metrics::describe_gauge!(
        "seckill_ledger_pending_intents",
        "Intents pending in the event's ledger, as the leader's last pass saw them"
    );
    metrics::describe_gauge!(
        "seckill_ledger_oldest_intent_age_seconds",
        "Age of the event's oldest pending ledger intent at the leader's last pass (0: none)"
    );
    metrics::describe_gauge!(
        "seckill_outbox_backlog",
        "Order events in the outbox not yet acknowledged by NATS"
    );
    metrics::describe_gauge!(
        "seckill_outbox_lag_seconds",
        "Age of the oldest unpublished order event"
    );
    metrics::describe_gauge!(
        "seckill_outbox_yielding",
        "1 while the outbox relay holds back for a crowd of purchases (bounded by SECKILL_OUTBOX_MAX_LAG_SECS)"
    );
    metrics::describe_counter!(
        "seckill_outbox_published_total",
        "Order events acknowledged by NATS JetStream"
    );
    metrics::describe_counter!(
        "seckill_outbox_publish_errors_total",
        "Outbox relay steps that failed (NATS down, restarting)"
    );
}

/// Latency buckets (seconds) for `seckill_http_request_duration_seconds`.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The commit this binary was built from (see build.rs).
pub const GIT_SHA: &str = env!("SECKILL_GIT_SHA");

/// Series that exist from the start: the build, and the counters that alert
/// rules watch, at zero (a counter that appears only on its first increment
/// hides that increment from `rate()`, and its alert from `promtool`-checked
/// rules that expect the series).
fn announce() {
    metrics::gauge!(
        "seckill_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => GIT_SHA
    )
    .set(1.0);
    for name in [
        "seckill_version_conflicts_total",
        "seckill_writer_batch_retries_total",
        "seckill_channel_full_total",
        "seckill_reconcile_replayed_total",
        "seckill_reconcile_runs_total",
        "seckill_intents_oversold_total",
        "seckill_intents_refused_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("seckill_reconcile_leader").set(0.0);
}
