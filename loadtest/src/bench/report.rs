//! The benchmark's verdict: `bench.json` for scripts, a table for people,
//! the SPEC §7 targets, and the warnings a run collects.

use std::fmt::Write as _;

use chrono::Utc;
use serde::Serialize;

use super::phase::PhaseReport;
use crate::cli::ClientKind;

/// SPEC §7 targets measured here.
const TARGET_RATIO_EVENT_PAGE: f64 = 0.85;
const TARGET_RATIO_SELLING: f64 = 0.30;
const TARGET_RATIO_SOLD_OUT: f64 = 0.85;
const TARGET_P99_MS: f64 = 5.0;
/// Cores used by processes other than client, engine, Redis and Postgres
/// above which a phase is reported as disturbed.
const OTHER_LOAD_WARN: f64 = 0.25;

/// One SPEC target and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: &'static str,
    pub target: String,
    pub value: f64,
    pub met: bool,
}

/// What the set-up took.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub users: u64,
    pub sign_secs: f64,
    pub sign_us_per_token: f64,
    /// Tokens signed inside the loop because the pre-signed range ran out.
    pub signed_inline: u64,
    pub seed_secs: f64,
    pub selling_event_id: i64,
    pub sold_out_event_id: i64,
}

/// What the writers persisted of the purchase phases.
#[derive(Debug, Clone, Serialize)]
pub struct Persisted {
    /// Orders of the selling phase still pending when the sold-out phase began.
    pub backlog_at_sold_out_start: i64,
    pub selling_drained: bool,
    /// From the end of the selling phase (polled every 100 ms).
    pub selling_drain_secs: f64,
    pub selling_sold: i64,
    pub selling_failed: i64,
    pub selling_stock_left: i64,
    pub sold_out_event_sold: i64,
    /// Orders persisted during the bench (both events).
    pub orders: i64,
}

/// The outbox relay's catch-up after the purchase phases (it yields to a
/// crowd): the order events it published and what that cost, per event.
#[derive(Debug, Clone, Serialize)]
pub struct RelayCatchUp {
    pub caught_up: bool,
    /// Order events owed, and the age of the oldest, as the purchase phases ended.
    pub owed_at_start: u64,
    pub lag_at_start_secs: f64,
    pub events: u64,
    pub secs: f64,
    /// Per published event; `other` holds the broker (nats-server).
    pub cpu: super::cpu::CpuUse,
}

/// `bench.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub head: Head,
    /// The ceiling: the faster of the `healthz` and `healthz_after` phases.
    pub healthz_rps: f64,
    pub healthz_p50_ms: f64,
    pub healthz_p99_ms: f64,
    pub event_page_rps: f64,
    pub event_page_p99_ms: f64,
    pub selling_rps: f64,
    pub selling_p50_ms: f64,
    pub selling_p99_ms: f64,
    pub sold_out_rps: f64,
    pub sold_out_p50_ms: f64,
    pub sold_out_p99_ms: f64,
    pub ratio_event_page: f64,
    pub ratio_selling: f64,
    pub ratio_sold_out: f64,
    pub targets: Vec<TargetReport>,
    pub all_met: bool,
    pub setup: Setup,
    pub persisted: Persisted,
    /// `None`: the engine ran no outbox relay.
    pub relay: Option<RelayCatchUp>,
    pub phases: Vec<PhaseReport>,
    pub warnings: Vec<String>,
}

/// The run's circumstances, at the head of `bench.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub started_at: chrono::DateTime<Utc>,
    pub base_url: String,
    pub client: ClientKind,
    pub cpus: usize,
    pub connections: usize,
    pub phase_secs: u64,
}

impl BenchReport {
    /// The report of the `healthz`, event page, selling and sold-out
    /// phases: their headline figures, ratios to the ceiling, and the targets.
    pub fn new(
        head: Head,
        [health, page, sell, gone, health_after]: [PhaseReport; 5],
        setup: Setup,
        persisted: Persisted,
        relay: Option<RelayCatchUp>,
        warnings: Vec<String>,
    ) -> Self {
        // The ceiling is the faster of the two `/healthz` phases: a first
        // one slowed by work left over from an earlier run (autovacuum of
        // its orders) would otherwise inflate every ratio.
        let ceiling = if health_after.rps > health.rps {
            &health_after
        } else {
            &health
        };
        let (healthz_rps, healthz_p50_ms, healthz_p99_ms) =
            (ceiling.rps, ceiling.p50_ms, ceiling.p99_ms);
        let ratio_event_page = ratio(page.rps, healthz_rps);
        let ratio_selling = ratio(sell.rps, healthz_rps);
        let ratio_sold_out = ratio(gone.rps, healthz_rps);
        let targets = targets(
            [ratio_event_page, ratio_selling, ratio_sold_out],
            [sell.p99_ms, gone.p99_ms],
            head.connections,
        );
        Self {
            head,
            healthz_rps,
            healthz_p50_ms,
            healthz_p99_ms,
            event_page_rps: page.rps,
            event_page_p99_ms: page.p99_ms,
            selling_rps: sell.rps,
            selling_p50_ms: sell.p50_ms,
            selling_p99_ms: sell.p99_ms,
            sold_out_rps: gone.rps,
            sold_out_p50_ms: gone.p50_ms,
            sold_out_p99_ms: gone.p99_ms,
            ratio_event_page,
            ratio_selling,
            ratio_sold_out,
            all_met: targets.iter().all(|t| t.met),
            targets,
            setup,
            persisted,
            relay,
            phases: vec![health, page, sell, gone, health_after],
            warnings,
        }
    }
}

/// `rps` as a share of the `/healthz` ceiling; 0 without a ceiling.
fn ratio(rps: f64, healthz_rps: f64) -> f64 {
    if healthz_rps > 0.0 {
        rps / healthz_rps
    } else {
        0.0
    }
}

/// The SPEC §7 targets: the (event page, selling, sold-out) ratios and the
/// (selling, sold-out) p99s at `connections` connections.
fn targets(
    [page, selling, sold_out]: [f64; 3],
    [selling_p99, sold_out_p99]: [f64; 2],
    connections: usize,
) -> Vec<TargetReport> {
    let at_least = |name, value: f64, target: f64| TargetReport {
        name,
        target: format!(">= {target}"),
        value,
        met: value >= target,
    };
    let p99 = |name, value: f64| TargetReport {
        name,
        target: format!("<= {TARGET_P99_MS} at {connections} connections"),
        value,
        met: value <= TARGET_P99_MS && connections >= 64,
    };
    vec![
        at_least("event_page_ratio", page, TARGET_RATIO_EVENT_PAGE),
        at_least("purchase_selling_ratio", selling, TARGET_RATIO_SELLING),
        at_least("purchase_sold_out_ratio", sold_out, TARGET_RATIO_SOLD_OUT),
        p99("purchase_selling_p99_ms", selling_p99),
        p99("purchase_sold_out_p99_ms", sold_out_p99),
    ]
}

/// Persisted figures that disagree with what the phases were answered.
pub fn persisted_warnings(sell: &PhaseReport, persisted: &Persisted) -> Vec<String> {
    let mut warnings = Vec::new();
    if persisted.selling_sold != sell.ok as i64 {
        warnings.push(format!(
            "{} purchases were accepted (202) in the selling phase but {} units are persisted as sold ({} failed)",
            sell.ok, persisted.selling_sold, persisted.selling_failed
        ));
    }
    if persisted.sold_out_event_sold != 1 {
        warnings.push(format!(
            "the sold-out event has {} units sold, expected 1",
            persisted.sold_out_event_sold
        ));
    }
    warnings
}

/// Phases during which other processes loaded the box; such warnings do not
/// fail the run, the figures are only marked as disturbed.
pub fn disturbance_warnings(phases: &[&PhaseReport]) -> Vec<String> {
    phases
        .iter()
        .filter_map(|p| {
            let other = p.cpu.other_cores.filter(|&o| o > OTHER_LOAD_WARN)?;
            Some(format!(
                "{}: other processes used {other:.2} cores of the box during the phase: the figures are disturbed",
                p.name
            ))
        })
        .collect()
}

/// Phases with answers that did not count.
pub fn uncounted_warnings(phases: &[&PhaseReport]) -> Vec<String> {
    phases
        .iter()
        .filter_map(|p| {
            let bad: u64 = p.other.values().sum();
            (bad > 0).then(|| {
                format!(
                    "{}: {bad} of {} answers did not count: {:?}",
                    p.name, p.requests, p.other
                )
            })
        })
        .collect()
}

/// The targets not met, each as `name value (target …)`.
pub fn missed_targets(r: &BenchReport) -> Vec<String> {
    r.targets
        .iter()
        .filter(|t| !t.met)
        .map(|t| format!("{} {:.3} (target {})", t.name, t.value, t.target))
        .collect()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

/// The report as printed at the end of a run.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "== seckill bench: {} connections, {}s per phase, {} client, {} CPUs ==",
        r.head.connections,
        r.head.phase_secs,
        match r.head.client {
            ClientKind::Hyper => "hyper",
            ClientKind::Reqwest => "reqwest",
        },
        r.head.cpus
    );
    render_phases(&mut s, r);
    let _ = writeln!(
        s,
        "tokens: {} pre-signed in {:.2}s ({:.1} µs each), {} signed inline; wallets funded in {:.2}s",
        r.setup.users,
        r.setup.sign_secs,
        r.setup.sign_us_per_token,
        r.setup.signed_inline,
        r.setup.seed_secs
    );
    let _ = writeln!(
        s,
        "orders persisted during bench: {} (selling event: {} sold, {} failed, {} pending as the sold-out phase began, drained {} {:.2}s after its phase; sold-out event: {})",
        r.persisted.orders,
        r.persisted.selling_sold,
        r.persisted.selling_failed,
        r.persisted.backlog_at_sold_out_start,
        if r.persisted.selling_drained { "yes" } else { "NO" },
        r.persisted.selling_drain_secs,
        r.persisted.sold_out_event_sold
    );
    if let Some(relay) = &r.relay {
        let u = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "outbox relay (yields to the crowd): {} events owed as the purchase phases ended (oldest {:.1}s), {} published in {:.2}s after them{}; per event: engine {} µs, postgres {} µs, broker and the rest {} µs",
            relay.owed_at_start,
            relay.lag_at_start_secs,
            relay.events,
            relay.secs,
            if relay.caught_up { "" } else { " (NOT caught up)" },
            u(relay.cpu.engine_us_per_request),
            u(relay.cpu.postgres_us_per_request),
            u(relay.cpu.other_us_per_request),
        );
    }
    let _ = writeln!(s, "SPEC §7 targets:");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "  {:<26} {:>8.3}  (target {:<24}) {}",
            t.name,
            t.value,
            t.target,
            met(t.met)
        );
    }
    for w in &r.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    s
}

/// The two tables: rates and latencies per phase, then CPU use per phase.
fn render_phases(s: &mut String, r: &BenchReport) {
    let _ = writeln!(
        s,
        "{:<18} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "phase", "req/s", "ratio", "p50 ms", "p90 ms", "p99 ms", "max ms", "client µs", "engine µs"
    );
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
    for p in &r.phases {
        let _ = writeln!(
            s,
            "{:<18} {:>10.0} {:>7.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>10}",
            p.name,
            p.rps,
            ratio(p.rps, r.healthz_rps),
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.max_ms,
            f(p.cpu.client_us_per_request, 1),
            f(p.cpu.engine_us_per_request, 1),
        );
    }
    let _ = writeln!(
        s,
        "(client/engine µs: CPU time per request, client = this load generator)"
    );
    let _ = writeln!(
        s,
        "{:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "CPU cores used", "client", "engine", "redis", "postgres", "other", "box busy"
    );
    for p in &r.phases {
        let c = &p.cpu;
        let _ = writeln!(
            s,
            "{:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}%",
            p.name,
            f(c.client_cores, 2),
            f(c.engine_cores, 2),
            f(c.redis_cores, 2),
            f(c.postgres_cores, 2),
            f(c.other_cores, 2),
            f(c.machine_busy_pct, 0),
        );
    }
}
