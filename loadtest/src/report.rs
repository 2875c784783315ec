//! The report: printed for people, written as JSON for scripts.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    crowd::Shapes,
    drain::Drain,
    plan::Plan,
    stats::{Latency, Phase, Stats},
    stock::StockPoint,
    threshold::Judged,
    verify::{Check, Verdict},
};

/// One run's report; serialised as `report-<scenario>.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub started_at: DateTime<Utc>,
    pub plan: Plan,
    pub event_id: i64,
    pub first_user_id: i64,
    pub payers: u64,
    pub shapes: Shapes,
    pub stats: Stats,
    /// Answers outside the contract's expected outcomes, by status and code.
    pub unexpected: BTreeMap<String, u64>,
    /// The admin event as polled (stock left over time).
    pub stock: Vec<StockPoint>,
    pub drain: Drain,
    /// When the writers had persisted every 202, seconds after the start.
    pub drained_at_secs: Option<f64>,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub passed: bool,
    pub thresholds: Vec<Judged>,
    /// The process's exit code (see `--help`).
    pub exit_code: u8,
    pub report_path: PathBuf,
    pub chart_path: Option<PathBuf>,
}

impl Report {
    /// Writes the JSON next to the chart.
    pub fn write_json(&self) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).context("serialising the report")?;
        std::fs::write(&self.report_path, json)
            .with_context(|| format!("writing {}", self.report_path.display()))
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn render_into(&self, o: &mut String) -> std::fmt::Result {
        let k = &self.plan.knobs;
        let st = &self.stats;
        writeln!(o)?;
        writeln!(o, "=== seckill load test: {} ===", self.scenario)?;
        writeln!(
            o,
            "event {} at {}: stock {}, price {}, per-user limit {}, quantity {} per request",
            self.event_id, self.plan.base_url, k.stock, k.price, k.per_user_limit, k.quantity
        )?;
        writeln!(
            o,
            "crowd: {} shoppers (ids {}..{}, {} can pay), budget {} requests / {} s",
            k.users,
            self.first_user_id,
            self.first_user_id + k.users as i64 - 1,
            self.payers,
            k.requests,
            k.duration_secs
        )?;
        match &self.plan.schedule {
            None => writeln!(
                o,
                "pace: closed loop, {} connections each sending when its last answer is in",
                k.concurrency
            )?,
            Some(s) => writeln!(
                o,
                "pace: open model, stages {s} (requests/s), at most {} in flight, \
                 dropped when {} ms late",
                k.concurrency, self.plan.max_lag_ms
            )?,
        }
        writeln!(
            o,
            "sent {} requests: {} single attempts, {} Idempotency-Key retries (x2), {} double clicks (x2)",
            st.requests, self.shapes.single, self.shapes.retry, self.shapes.duplicate
        )?;
        self.render_throughput(o)?;
        self.render_outcomes(o)?;
        self.render_latency(o)?;
        self.render_times(o)?;
        self.render_checks(o)?;
        self.render_verdict(o)
    }

    /// Requests per second overall and by phase.
    fn render_throughput(&self, o: &mut String) -> std::fmt::Result {
        let st = &self.stats;
        writeln!(o, "\nthroughput")?;
        let phase = |o: &mut String, name: &str, p: &Phase| {
            writeln!(
                o,
                "  {name:<22} {:>10.0} req/s   ({} requests in {:.2} s)",
                p.rps, p.requests, p.secs
            )
        };
        phase(o, "overall", &st.overall)?;
        phase(o, "selling (stock left)", &st.selling)?;
        match &st.sold_out {
            Some(p) => phase(o, "sold out", p)?,
            None => writeln!(o, "  {:<22} {:>10}", "sold out", "-")?,
        }
        Ok(())
    }

    /// Answers by outcome, and the unexpected ones by status and code.
    fn render_outcomes(&self, o: &mut String) -> std::fmt::Result {
        let st = &self.stats;
        writeln!(o, "\noutcomes")?;
        for (label, n) in &st.outcomes {
            let share = share(*n, st.requests);
            writeln!(o, "  {label:<16} {n:>10}  {share:>6.2}%")?;
        }
        for (what, n) in &self.unexpected {
            writeln!(o, "    unexpected: {what} x{n}")?;
        }
        writeln!(
            o,
            "  {:<16} {:>10}  {:>6.2}%   (5xx, timeouts, transport errors; 409 and 429 are answers)",
            "errors",
            st.errors,
            share(st.errors, st.requests)
        )?;
        if self.plan.schedule.is_some() {
            let scheduled = st.requests + st.dropped;
            writeln!(
                o,
                "  {:<16} {:>10}  {:>6.2}%   of {scheduled} scheduled: not sent, more than {} ms late \
                 with every connection busy",
                "dropped",
                st.dropped,
                share(st.dropped, scheduled),
                self.plan.max_lag_ms
            )?;
        }
        Ok(())
    }

    /// Latency percentiles by outcome and over all answers.
    fn render_latency(&self, o: &mut String) -> std::fmt::Result {
        let st = &self.stats;
        if self.plan.schedule.is_some() {
            writeln!(
                o,
                "\nlatency from each request's due time (coordinated omission corrected)"
            )?;
        }
        writeln!(
            o,
            "\nlatency (ms)          count      p50      p90      p99    p99.9      max"
        )?;
        let row = |o: &mut String, label: &str, l: &Latency| {
            writeln!(
                o,
                "  {label:<16} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            )
        };
        for (label, l) in &st.latency {
            row(o, label, l)?;
        }
        if let Some(all) = &st.latency_all {
            row(o, "all", all)?;
        }
        if let (Some(from_send), Some(lag)) = (&st.latency_from_send, &st.send_lag) {
            row(o, "all, from send", from_send)?;
            row(o, "send lag", lag)?;
            writeln!(
                o,
                "  (from send: what a tool ignoring coordinated omission reports; send lag: \
                 due time to send, 0 for a request sent on time)"
            )?;
        }
        Ok(())
    }

    /// Time to sell out, last 202, time to drain, final figures.
    fn render_times(&self, o: &mut String) -> std::fmt::Result {
        let st = &self.stats;
        let ev = &self.drain.event;
        writeln!(o, "\ntimes")?;
        match st.sold_out_at_secs {
            Some(t) => writeln!(
                o,
                "  time to sell out      {t:.3} s (first sold_out answer)"
            )?,
            None => writeln!(o, "  time to sell out      - (no sold_out answer)")?,
        }
        if let Some(t) = st.last_accept_secs {
            writeln!(o, "  last 202              {t:.3} s")?;
        }
        writeln!(
            o,
            "  time to drain         {:.3} s after the last answer{}",
            self.drain.secs,
            if self.drain.drained {
                ""
            } else {
                " (NOT drained)"
            }
        )?;
        if let Some(t) = self.drained_at_secs {
            writeln!(
                o,
                "  drained at            {t:.3} s (first stock poll after the last 202 with nothing pending)"
            )?;
        }
        writeln!(
            o,
            "  final figures         stock_left {}, sold {}, pending {}, failed {}, confirmed_amount {}",
            ev.stock_left, ev.sold, ev.pending, ev.failed, ev.confirmed_amount
        )?;
        Ok(())
    }

    /// Every check with its detail, where the files went, and the result.
    fn render_checks(&self, o: &mut String) -> std::fmt::Result {
        writeln!(o, "\nchecks")?;
        for c in &self.checks {
            let v = match c.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            writeln!(o, "  {v}  [{}] {}", c.source, c.name)?;
            if !c.detail.is_empty() {
                writeln!(o, "        {}", c.detail)?;
            }
        }

        writeln!(o)?;
        writeln!(o, "report: {}", self.report_path.display())?;
        match &self.chart_path {
            Some(p) => writeln!(o, "chart:  {}", p.display())?,
            None => writeln!(o, "chart:  not written")?,
        }
        Ok(())
    }

    /// Every threshold with its measured value, then the result and its
    /// exit code.
    fn render_verdict(&self, o: &mut String) -> std::fmt::Result {
        if !self.thresholds.is_empty() {
            writeln!(o, "\nthresholds")?;
            for t in &self.thresholds {
                writeln!(o, "  {t}")?;
            }
        }
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        let missed: Vec<&str> = self
            .thresholds
            .iter()
            .filter(|t| !t.passed)
            .map(|t| t.threshold.as_str())
            .collect();
        let thresholds = if missed.is_empty() {
            String::new()
        } else {
            format!("; thresholds missed: {}", missed.join(", "))
        };
        let verdict = if self.exit_code == 0 { "PASS" } else { "FAIL" };
        let checks = if self.passed {
            format!(
                "{} checks passed, {} skipped",
                count(Verdict::Pass),
                count(Verdict::Skip)
            )
        } else {
            format!(
                "{} of {} checks failed",
                count(Verdict::Fail),
                self.checks.len()
            )
        };
        writeln!(
            o,
            "RESULT: {verdict} ({checks}{thresholds}; exit code {})",
            self.exit_code
        )
    }
}

/// `n` as a percentage of `of` (0 of nothing).
fn share(n: u64, of: u64) -> f64 {
    if of > 0 {
        n as f64 * 100.0 / of as f64
    } else {
        0.0
    }
}
