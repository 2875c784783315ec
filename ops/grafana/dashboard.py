#!/usr/bin/env python3
"""Writes grafana/dashboards/seckill.json (the file Grafana loads), or the
path given as the first argument.

The dashboard is kept as this script so its panels read as a list; run
`python3 ops/grafana/dashboard.py` after editing and commit both. The test
`cargo test --test ops rules` checks that every metric it names is exported
by the engine.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "prometheus"}
PURCHASE = 'route="/api/events/{id}/purchase"'
panels = []


cursor = {"x": 0, "y": 0}


def row(title):
    """A full-width row header; panels after it start on a new line."""
    if cursor["x"] > 0:
        cursor["x"], cursor["y"] = 0, cursor["y"] + 8
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": cursor["y"]}, "panels": []})
    cursor["y"] += 1


def panel(title, targets, unit="short", kind="timeseries", w=8, h=8, description=""):
    """A panel of `targets` [(PromQL, legend)], three to a line."""
    if cursor["x"] + w > 24:
        cursor["x"], cursor["y"] = 0, cursor["y"] + h
    panels.append({
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": cursor["x"], "y": cursor["y"]},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    })
    cursor["x"] += w


row("Traffic")
panel("Requests/s by status", [('sum by (status) (rate(seckill_http_requests_total[1m]))', "{{status}}")], "reqps")
panel("Purchases/s by outcome", [('sum by (outcome) (rate(seckill_purchases_total[1m]))', "{{outcome}}")], "reqps")
panel("Purchase latency", [
    (f'histogram_quantile(0.5, sum by (le) (rate(seckill_http_request_duration_seconds_bucket{{{PURCHASE}}}[1m])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(seckill_http_request_duration_seconds_bucket{{{PURCHASE}}}[1m])))', "p99"),
    ('histogram_quantile(0.99, sum by (le) (rate(seckill_purchase_seconds_bucket[1m])))', "p99 (handler)"),
], "s", description="SPEC: p99 <= 5 ms at 64 connections")
panel("p99 by route", [('histogram_quantile(0.99, sum by (le, route) (rate(seckill_http_request_duration_seconds_bucket[1m])))', "{{route}}")], "s")
panel("5xx ratio", [('sum(rate(seckill_http_requests_total{status=~"5.."}[5m])) / sum(rate(seckill_http_requests_total[5m]))', "5xx")], "percentunit", kind="stat")
panel("Rate limiter keys", [('sum by (kind) (seckill_ratelimit_keys)', "{{kind}}")])

row("Orders on their way to Postgres")
panel("Pending intents by event", [('max by (event_id) (seckill_ledger_pending_intents)', "event {{event_id}}")],
      description="As the reconciler leader saw them at its last pass")
panel("Oldest pending intent by event", [('max by (event_id) (seckill_ledger_oldest_intent_age_seconds)', "event {{event_id}}")], "s",
      description="Alert SeckillLedgerIntentsStuck above 30 s")
panel("Writer channel depth", [('sum by (instance) (seckill_channel_depth)', "{{instance}}")])
panel("Orders persisted/s", [('sum by (status) (rate(seckill_orders_persisted_total[1m]))', "{{status}}")], "ops")
panel("Writer batch size (p50, p99)", [
    ('histogram_quantile(0.5, sum by (le) (rate(seckill_writer_batch_size_bucket[1m])))', "p50"),
    ('histogram_quantile(0.99, sum by (le) (rate(seckill_writer_batch_size_bucket[1m])))', "p99"),
])
panel("Writer trouble/s", [
    ('sum(rate(seckill_writer_batch_retries_total[1m]))', "batch retries"),
    ('sum(rate(seckill_version_conflicts_total[1m]))', "version conflicts"),
    ('sum(rate(seckill_channel_full_total[1m]))', "channel full"),
    ('sum(rate(seckill_intents_refused_total[1m]))', "intents refused"),
], "ops")

row("Reconciler")
panel("Leader", [('seckill_reconcile_leader', "{{instance}}")], description="Exactly one engine should be 1")
panel("Since last successful pass", [('time() - max(seckill_reconcile_last_success_timestamp_seconds)', "seconds")], "s", kind="stat")
panel("Discrepancies found (10 m)", [('sum by (kind) (increase(seckill_reconcile_discrepancies_total[10m]))', "{{kind}}")])
panel("Intents replayed/s", [('sum(rate(seckill_reconcile_replayed_total[5m]))', "replayed")], "ops")
panel("Pass duration p99", [('histogram_quantile(0.99, sum by (le) (rate(seckill_reconcile_pass_seconds_bucket[5m])))', "p99")], "s")
panel("Passes/min", [('sum(rate(seckill_reconcile_runs_total[5m])) * 60', "passes")])

row("Order events (outbox to NATS)")
panel("Outbox lag", [('max(seckill_outbox_lag_seconds)', "lag")], "s")
panel("Outbox backlog", [('max(seckill_outbox_backlog)', "backlog")])
panel("Builds running", [('seckill_build_info', "{{instance}} {{version}} {{git_sha}}")], kind="table")

dashboard = {
    "uid": "seckill-engine",
    "title": "seckill engine",
    "tags": ["seckill"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "5s",
    "time": {"from": "now-30m", "to": "now"},
    "editable": True,
    "panels": [dict(p, id=i + 1) for i, p in enumerate(panels)],
    "templating": {"list": []},
    "annotations": {"list": []},
}
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "dashboards", "seckill.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
