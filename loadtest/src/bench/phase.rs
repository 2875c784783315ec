//! One measured phase: every keep-alive connection driven by its own task in
//! a closed loop (send, await the whole answer, send again) until the phase's
//! deadline, each answer timed and sorted into counted or not.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use http::StatusCode;
use serde::Serialize;

use super::{
    client::{Call, Conn, Failure},
    cpu::{CpuSample, CpuUse},
    setup::Tokens,
};
use crate::{
    api::error_code,
    stats::{histogram, MAX_LATENCY_US},
};

/// Figures of one measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: &'static str,
    /// What counted: `200`, `202`, `409 sold_out`.
    pub counted: &'static str,
    pub ok: u64,
    pub requests: u64,
    /// Answers that did not count, by `"<status> <error code>"`.
    pub other: BTreeMap<String, u64>,
    pub secs: f64,
    /// Counted answers per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub cpu: CpuUse,
}

/// What a phase sends and what counts.
#[derive(Clone, Copy)]
pub enum Expect {
    Status(StatusCode),
    SoldOut,
}

impl Expect {
    fn label(self) -> &'static str {
        match self {
            Expect::Status(StatusCode::OK) => "200",
            Expect::Status(StatusCode::ACCEPTED) => "202",
            Expect::Status(_) => "status",
            Expect::SoldOut => "409 sold_out",
        }
    }

    fn counts(self, status: StatusCode, body: &[u8]) -> bool {
        match self {
            Expect::Status(s) => status == s,
            Expect::SoldOut => {
                status == StatusCode::CONFLICT
                    && memchr::memmem::find(body, b"\"sold_out\"").is_some()
            }
        }
    }
}

/// One phase as every worker sees it.
struct PhaseSpec {
    call: Call,
    tokens: Option<Arc<Tokens>>,
    expect: Expect,
    deadline: Instant,
    /// False for the warm-up: send, but keep no figures.
    record: bool,
}

/// What one worker (or, merged, the whole phase) saw.
struct WorkerLog {
    hist: Histogram<u64>,
    ok: u64,
    requests: u64,
    other: BTreeMap<String, u64>,
    last_done: Instant,
}

impl WorkerLog {
    fn new(now: Instant) -> Self {
        Self {
            hist: histogram(3),
            ok: 0,
            requests: 0,
            other: BTreeMap::new(),
            last_done: now,
        }
    }

    fn merge(&mut self, other: WorkerLog) -> anyhow::Result<()> {
        self.hist.add(&other.hist).context("merging histograms")?;
        self.ok += other.ok;
        self.requests += other.requests;
        for (k, v) in other.other {
            *self.other.entry(k).or_default() += v;
        }
        self.last_done = self.last_done.max(other.last_done);
        Ok(())
    }
}

/// `"<status> <error code>"`, or the status alone when the body has no code.
fn other_label(status: StatusCode, body: &[u8]) -> String {
    let code = error_code(body);
    if code.is_empty() {
        status.as_u16().to_string()
    } else {
        format!("{} {code}", status.as_u16())
    }
}

async fn worker(mut conn: Conn, spec: Arc<PhaseSpec>) -> (Conn, WorkerLog) {
    let mut log = WorkerLog::new(Instant::now());
    loop {
        let sent = Instant::now();
        if sent >= spec.deadline {
            break;
        }
        let token = spec.tokens.as_ref().map(|t| t.next());
        let result = conn.send(&spec.call, token.as_ref()).await;
        let done = Instant::now();
        if !spec.record {
            continue;
        }
        log.requests += 1;
        log.last_done = done;
        let latency = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        log.hist.saturating_record(latency.clamp(1, MAX_LATENCY_US));
        match result {
            Ok((status, body)) if spec.expect.counts(status, &body) => log.ok += 1,
            Ok((status, body)) => *log.other.entry(other_label(status, &body)).or_default() += 1,
            Err(Failure::Timeout) => *log.other.entry("timeout".into()).or_default() += 1,
            Err(Failure::Transport) => {
                *log.other.entry("transport_error".into()).or_default() += 1;
                // Do not spin on a dead engine.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (conn, log)
}

/// The benchmark's connections, kept open from phase to phase.
pub struct Phases {
    conns: Vec<Conn>,
    /// Seconds per measured phase.
    phase_secs: u64,
    engine_pid: Option<u32>,
    /// Processes whose CPU use is reported one by one (`--watch-pid`).
    watch: Vec<(String, u32)>,
}

impl Phases {
    /// Takes over the open connections.
    pub fn new(
        conns: Vec<Conn>,
        phase_secs: u64,
        engine_pid: Option<u32>,
        watch: Vec<(String, u32)>,
    ) -> Self {
        Self {
            conns,
            phase_secs,
            engine_pid,
            watch,
        }
    }

    /// CPU of every process now, for a measure outside the phases.
    pub fn cpu_sample(&self) -> CpuSample {
        CpuSample::take(self.engine_pid, &self.watch)
    }

    /// CPU use between two samples, per `requests`.
    pub fn cpu_between(&self, a: &CpuSample, b: &CpuSample, requests: u64) -> CpuUse {
        CpuUse::between(a, b, requests, &self.watch)
    }

    /// Sends `call` for `secs` and keeps no figures.
    pub async fn warm_up(&mut self, call: &Call, secs: u64) -> anyhow::Result<()> {
        let expect = Expect::Status(StatusCode::OK);
        self.run(call, None, expect, secs as f64, false).await?;
        Ok(())
    }

    /// Measures one phase of `call`, announced and summed up on stdout.
    pub async fn measure(
        &mut self,
        name: &'static str,
        call: &Call,
        tokens: Option<&Arc<Tokens>>,
        expect: Expect,
    ) -> anyhow::Result<PhaseReport> {
        println!("bench: phase {name} ({}s)", self.phase_secs);
        let secs = self.phase_secs as f64;
        let (t0, log, cpu) = self.run(call, tokens, expect, secs, true).await?;
        let report = PhaseReport::new(name, expect, t0, log, cpu);
        print_phase(&report);
        Ok(report)
    }

    /// Runs one closed-loop phase over every connection and takes them back;
    /// returns its start, what the workers saw and the CPU use.
    async fn run(
        &mut self,
        call: &Call,
        tokens: Option<&Arc<Tokens>>,
        expect: Expect,
        secs: f64,
        record: bool,
    ) -> anyhow::Result<(Instant, WorkerLog, CpuUse)> {
        let cpu0 = CpuSample::take(self.engine_pid, &self.watch);
        let t0 = Instant::now();
        let spec = Arc::new(PhaseSpec {
            call: call.clone(),
            tokens: tokens.cloned(),
            expect,
            deadline: t0 + Duration::from_secs_f64(secs),
            record,
        });
        let tasks: Vec<_> = std::mem::take(&mut self.conns)
            .into_iter()
            .map(|c| tokio::spawn(worker(c, Arc::clone(&spec))))
            .collect();
        let mut log = WorkerLog::new(t0);
        for t in tasks {
            let (conn, part) = t.await.context("a bench worker panicked")?;
            self.conns.push(conn);
            log.merge(part)?;
        }
        let cpu1 = CpuSample::take(self.engine_pid, &self.watch);
        let cpu = CpuUse::between(&cpu0, &cpu1, log.requests, &self.watch);
        Ok((t0, log, cpu))
    }
}

impl PhaseReport {
    fn new(name: &'static str, expect: Expect, t0: Instant, log: WorkerLog, cpu: CpuUse) -> Self {
        let secs = log.last_done.duration_since(t0).as_secs_f64().max(1e-9);
        let ms = |q: f64| log.hist.value_at_quantile(q) as f64 / 1_000.0;
        Self {
            name,
            counted: expect.label(),
            ok: log.ok,
            requests: log.requests,
            secs,
            rps: log.ok as f64 / secs,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: log.hist.max() as f64 / 1_000.0,
            cpu,
            other: log.other,
        }
    }
}

fn print_phase(p: &PhaseReport) {
    println!(
        "bench:   {:<18} {:>9.0} req/s counted ({} of {} answers were {}), p50 {:.2} ms, p99 {:.2} ms",
        p.name, p.rps, p.ok, p.requests, p.counted, p.p50_ms, p.p99_ms
    );
}
