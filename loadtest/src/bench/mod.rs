//! `seckill-loadtest bench`: the macro benchmark of SPEC §7, all phases in
//! one run against one running engine, with the same client and the same
//! keep-alive connections throughout, so the ratios compare like with like.
//!
//! 1. warm-up on `/healthz` (not reported);
//! 2. `healthz`: the HTTP ceiling of this box;
//! 3. `purchase_selling`: every request a fresh shopper buying 1 unit of an
//!    event with more stock than the phase can sell; only 202s count;
//! 4. `purchase_sold_out`: fresh shoppers against a sold-out event, answered
//!    409 `sold_out` from the engine's local flag; only those count;
//! 5. ratios to the ceiling, p99s, the SPEC targets, and the orders the
//!    writers persisted.
//!
//! Shopper tokens are signed before the purchase phases (in parallel, timed),
//! so the client spends its CPU on HTTP, not on HMAC.

mod client;
mod cpu;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;

use self::{
    client::{Call, ClientKind, Conn, Failure, Target},
    cpu::{CpuSample, CpuUse},
};
use crate::{
    api::{AdminEvent, Api, NewEvent, Outcome, Signer},
    config::MAX_USERS,
    verify,
};

/// SPEC §7 targets measured here.
const TARGET_RATIO_SELLING: f64 = 0.45;
const TARGET_RATIO_SOLD_OUT: f64 = 0.85;
const TARGET_P99_MS: f64 = 5.0;
/// Most wallets one `POST /admin/wallets/seed` may create.
const SEED_MAX_PER_CALL: u64 = 1_000_000;
/// Wallets per seed call here (a smaller call stays well inside its timeout).
const SEED_CHUNK: u64 = 250_000;
const MAX_BENCH_USERS: u64 = 1_000_000;
const MAX_LATENCY_US: u64 = 60_000_000;
/// Cores used by processes other than client, engine, Redis and Postgres
/// above which a phase is reported as disturbed.
const OTHER_LOAD_WARN: f64 = 0.25;

/// Macro benchmark: `/healthz` ceiling, purchases while stock lasts and after
/// sell-out, as ratios to the ceiling with p99 latencies (SPEC §7).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Engine base URL.
    #[arg(
        long,
        env = "SECKILL_LOADTEST_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base_url: String,
    /// Keep-alive connections, each driven by one task in a closed loop.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Seconds of `/healthz` warm-up before the first phase (not reported).
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// HTTP client implementation (same one for every phase).
    #[arg(long, value_enum, default_value_t = ClientKind::Hyper)]
    pub client: ClientKind,
    /// Shoppers to pre-sign tokens for and fund; default: enough for the
    /// selling phase at the measured `/healthz` rate (+25 %), at most 1 000 000.
    #[arg(long)]
    pub users: Option<u64>,
    /// First shopper id; default derives a fresh range from the clock.
    #[arg(long)]
    pub first_user_id: Option<i64>,
    /// Stock of the selling event (must outlast the phase).
    #[arg(long, default_value_t = 5_000_000)]
    pub stock: i64,
    /// Engine process id, to report its CPU use per phase (from /proc).
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Longest wait for the writers to drain after a purchase phase.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
    /// Where bench.json goes.
    #[arg(long, env = "SECKILL_LOADTEST_OUT_DIR", default_value = "loadtest/out")]
    pub out_dir: PathBuf,
    /// Operator token of the engine.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// HS256 secret the engine verifies shopper tokens with.
    #[arg(long, env = "SECKILL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: &'static str,
    pub target: String,
    pub value: f64,
    pub met: bool,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct Persisted {
    pub selling_drained: bool,
    pub selling_drain_secs: f64,
    pub selling_sold: i64,
    pub selling_failed: i64,
    pub selling_stock_left: i64,
    pub sold_out_event_sold: i64,
    /// Orders persisted during the bench (both events).
    pub orders: i64,
}

/// `bench.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub started_at: chrono::DateTime<Utc>,
    pub base_url: String,
    pub client: ClientKind,
    pub cpus: usize,
    pub connections: usize,
    pub phase_secs: u64,
    pub healthz_rps: f64,
    pub healthz_p50_ms: f64,
    pub healthz_p99_ms: f64,
    pub selling_rps: f64,
    pub selling_p50_ms: f64,
    pub selling_p99_ms: f64,
    pub sold_out_rps: f64,
    pub sold_out_p50_ms: f64,
    pub sold_out_p99_ms: f64,
    pub ratio_selling: f64,
    pub ratio_sold_out: f64,
    pub targets: Vec<TargetReport>,
    pub all_met: bool,
    pub setup: Setup,
    pub persisted: Persisted,
    pub phases: Vec<PhaseReport>,
    pub warnings: Vec<String>,
}

/// Shopper tokens for a range of users, handed out in order.
struct Tokens {
    signer: Signer,
    first_user_id: i64,
    presigned: u64,
    next: AtomicU64,
    inline: AtomicU64,
}

impl Tokens {
    fn next(&self) -> HeaderValue {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.presigned {
            self.inline.fetch_add(1, Ordering::Relaxed);
        }
        // Cached (pre-signed) inside the range, signed on the spot beyond it.
        self.signer.bearer(self.first_user_id + i as i64)
    }
}

/// What a phase sends and what counts.
#[derive(Clone, Copy)]
enum Expect {
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

struct PhaseSpec {
    name: &'static str,
    call: Call,
    tokens: Option<Arc<Tokens>>,
    expect: Expect,
    secs: f64,
}

struct WorkerLog {
    hist: Histogram<u64>,
    ok: u64,
    requests: u64,
    other: BTreeMap<String, u64>,
    last_done: Instant,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds")
}

fn other_label(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) if !b.error.is_empty() => format!("{} {}", status.as_u16(), b.error),
        _ => status.as_u16().to_string(),
    }
}

async fn worker(
    mut conn: Conn,
    spec: Arc<PhaseSpec>,
    deadline: Instant,
    record: bool,
) -> (Conn, WorkerLog) {
    let mut log = WorkerLog {
        hist: histogram(),
        ok: 0,
        requests: 0,
        other: BTreeMap::new(),
        last_done: Instant::now(),
    };
    loop {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        let token = spec.tokens.as_ref().map(|t| t.next());
        let result = conn.send(&spec.call, token.as_ref()).await;
        let done = Instant::now();
        if !record {
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

/// Runs one closed-loop phase over every connection; gives them back.
async fn run_phase(
    conns: Vec<Conn>,
    spec: PhaseSpec,
    record: bool,
    engine_pid: Option<u32>,
) -> anyhow::Result<(Vec<Conn>, Option<PhaseReport>)> {
    let spec = Arc::new(spec);
    let cpu0 = CpuSample::take(engine_pid);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(spec.secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(worker(c, Arc::clone(&spec), deadline, record)))
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    let mut hist = histogram();
    let (mut ok, mut requests) = (0u64, 0u64);
    let mut other: BTreeMap<String, u64> = BTreeMap::new();
    let mut end = t0;
    for t in tasks {
        let (conn, log) = t.await.context("a bench worker panicked")?;
        conns.push(conn);
        hist.add(&log.hist).context("merging histograms")?;
        ok += log.ok;
        requests += log.requests;
        for (k, v) in log.other {
            *other.entry(k).or_default() += v;
        }
        end = end.max(log.last_done);
    }
    let cpu1 = CpuSample::take(engine_pid);
    if !record {
        return Ok((conns, None));
    }
    let secs = end.duration_since(t0).as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    let report = PhaseReport {
        name: spec.name,
        counted: spec.expect.label(),
        ok,
        requests,
        other,
        secs,
        rps: ok as f64 / secs,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1_000.0,
        cpu: CpuUse::between(&cpu0, &cpu1, requests),
    };
    Ok((conns, Some(report)))
}

/// Signs `users` tokens on every core; returns the signer holding them.
fn presign(secret: &str, first_user_id: i64, users: u64) -> (Signer, f64) {
    let signer = Signer::new(secret, first_user_id, users);
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per = users.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let signer = &signer;
            s.spawn(move || {
                let lo = t * per;
                let hi = ((t + 1) * per).min(users);
                for i in lo..hi {
                    let _ = signer.bearer(first_user_id + i as i64);
                }
            });
        }
    });
    (signer, started.elapsed().as_secs_f64())
}

async fn seed(api: &Api, first: i64, count: u64, balance: i64) -> anyhow::Result<u64> {
    let mut created = 0;
    let mut done = 0;
    while done < count {
        let n = SEED_CHUNK.min(SEED_MAX_PER_CALL).min(count - done);
        created += api.seed_wallets(first + done as i64, n, balance).await?;
        done += n;
    }
    Ok(created)
}

async fn new_event(api: &Api, name: &str, stock: i64) -> anyhow::Result<AdminEvent> {
    let now = Utc::now();
    let event = api
        .create_event(&NewEvent {
            name,
            price: 1,
            stock,
            per_user_limit: 1,
            starts_at: now - chrono::Duration::seconds(60),
            ends_at: now + chrono::Duration::hours(2),
        })
        .await?;
    ensure!(event.id > 0, "POST /admin/events answered without an id");
    api.preheat(event.id).await?;
    Ok(event)
}

fn purchase_call(event_id: i64) -> Call {
    Call {
        method: Method::POST,
        path: format!("/api/events/{event_id}/purchase"),
        body: Some(Bytes::from_static(br#"{"quantity":1}"#)),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    ensure!(
        (1..=4096).contains(&args.connections),
        "--connections must be in 1..=4096"
    );
    ensure!(args.phase_secs >= 1, "--phase-secs must be at least 1");
    ensure!(
        args.jwt_secret.len() >= 32,
        "SECKILL_JWT_SECRET must be the engine's secret (at least 32 bytes)"
    );
    ensure!(
        !args.admin_token.is_empty(),
        "SECKILL_ADMIN_TOKEN must be the engine's operator token"
    );
    if let Some(users) = args.users {
        ensure!(
            (1..=MAX_BENCH_USERS).contains(&users),
            "--users must be in 1..={MAX_BENCH_USERS}"
        );
    }
    let base_url = args.base_url.trim_end_matches('/').to_owned();
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let target = Target::new(&base_url, timeout)?;
    let api = Api::new(&base_url, &args.admin_token, 8, timeout)?;
    api.ready().await?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;

    let started_at = Utc::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = args.connections;
    let secs = args.phase_secs as f64;
    let pid = args.engine_pid;
    let mut warnings = Vec::new();
    // Warnings about load from other processes do not fail the run.
    let mut disturbed = 0;
    println!(
        "bench: {base_url}, {n} connections ({:?} client), {}s per phase, {cpus} CPUs shared with the engine",
        args.client, args.phase_secs
    );

    let mut conns = Conn::open(args.client, &target, n).await?;
    let healthz = Call {
        method: Method::GET,
        path: "/healthz".into(),
        body: None,
    };
    let spec = |name, call: &Call, tokens: Option<&Arc<Tokens>>, expect, secs| PhaseSpec {
        name,
        call: call.clone(),
        tokens: tokens.cloned(),
        expect,
        secs,
    };

    // 1. Warm-up (connections, caches, CPU frequency), not reported.
    let warm = spec(
        "warm-up",
        &healthz,
        None,
        Expect::Status(StatusCode::OK),
        args.warmup_secs as f64,
    );
    (conns, _) = run_phase(conns, warm, false, pid).await?;

    // 2. The HTTP ceiling.
    println!("bench: phase healthz ({}s)", args.phase_secs);
    let phase = spec(
        "healthz",
        &healthz,
        None,
        Expect::Status(StatusCode::OK),
        secs,
    );
    let (c, r) = run_phase(conns, phase, true, pid).await?;
    conns = c;
    let health = r.expect("recorded");
    print_phase(&health);

    // 3. Set-up for the purchase phases: tokens, wallets, events.
    let users = args.users.unwrap_or_else(|| {
        let want = (health.rps * secs * 1.25).ceil() as u64 + 10_000;
        want.clamp(10_000, MAX_BENCH_USERS)
    });
    let first_user_id = args
        .first_user_id
        .unwrap_or_else(|| started_at.timestamp() * MAX_USERS as i64 + 1);
    ensure!(
        first_user_id >= 1 && first_user_id.checked_add(users as i64 + 2).is_some(),
        "--first-user-id out of range"
    );
    let secret = args.jwt_secret.clone();
    let (signer, sign_secs) =
        tokio::task::spawn_blocking(move || presign(&secret, first_user_id, users)).await?;
    let sign_us = sign_secs * 1e6 / users as f64;
    println!(
        "bench: signed {users} shopper tokens in {sign_secs:.2}s ({sign_us:.1} µs each, all cores) before the purchase phases"
    );
    let tokens = Arc::new(Tokens {
        signer,
        first_user_id,
        presigned: users,
        next: AtomicU64::new(0),
        inline: AtomicU64::new(0),
    });

    let seeded = Instant::now();
    // Shoppers first..first+users pay 1 each; two more for selling out event B.
    let created = seed(&api, first_user_id, users + 2, 1).await?;
    let seed_secs = seeded.elapsed().as_secs_f64();
    if created != users + 2 {
        warnings.push(format!(
            "only {created} of {} wallets were new (earlier run with the same ids?)",
            users + 2
        ));
    }
    println!("bench: funded {} wallets in {seed_secs:.2}s", users + 2);

    let stamp = started_at.format("%Y-%m-%dT%H:%M:%SZ");
    let selling = new_event(&api, &format!("bench selling {stamp}"), args.stock).await?;
    let sold_out = new_event(&api, &format!("bench sold-out {stamp}"), 1).await?;
    // Sell event B's only unit, then let a second shopper meet the sold-out
    // answer from Redis, which raises the engine's local flag.
    let extra = first_user_id + users as i64;
    let url_b = api.purchase_url(sold_out.id)?;
    let body = Bytes::from_static(br#"{"quantity":1}"#);
    let first_buy = api
        .purchase(&url_b, tokens.signer.bearer(extra), body.clone(), None)
        .await;
    if first_buy.outcome != Outcome::Accepted {
        bail!(
            "selling the sold-out event's only unit answered {} ({:?})",
            first_buy.outcome.label(),
            first_buy.unexpected
        );
    }
    let second_buy = api
        .purchase(&url_b, tokens.signer.bearer(extra + 1), body, None)
        .await;
    if second_buy.outcome != Outcome::SoldOut {
        bail!(
            "a purchase after the sell-out answered {} ({:?})",
            second_buy.outcome.label(),
            second_buy.unexpected
        );
    }
    println!(
        "bench: event {} (stock {}) for selling, event {} sold out",
        selling.id, args.stock, sold_out.id
    );

    // 4. Purchases while stock lasts: fresh shoppers, 1 unit each.
    println!("bench: phase purchase_selling ({}s)", args.phase_secs);
    let phase = spec(
        "purchase_selling",
        &purchase_call(selling.id),
        Some(&tokens),
        Expect::Status(StatusCode::ACCEPTED),
        secs,
    );
    let (c, r) = run_phase(conns, phase, true, pid).await?;
    conns = c;
    let sell = r.expect("recorded");
    print_phase(&sell);
    let used = tokens.next.load(Ordering::Relaxed);
    if used > users {
        warnings.push(format!(
            "the selling phase used {used} shoppers, {} beyond the {users} pre-signed and funded ones",
            used - users
        ));
    }

    let drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    println!("bench: waiting for the writers to persist the selling phase's orders");
    let drain = verify::wait_for_drain(&api, selling.id, drain_timeout).await?;
    println!(
        "bench: drained={} in {:.2}s after the phase: {} sold, {} failed, {} pending",
        drain.drained, drain.secs, drain.event.sold, drain.event.failed, drain.event.pending
    );
    if !drain.drained {
        warnings.push(format!(
            "the selling event still had {} pending orders after {}s",
            drain.event.pending, args.drain_timeout_secs
        ));
    }

    // 5. Purchases after sell-out: fresh shoppers for event B (the same
    //    tokens from the start of the range: none of them has touched B).
    tokens.next.store(0, Ordering::Relaxed);
    println!("bench: phase purchase_sold_out ({}s)", args.phase_secs);
    let phase = spec(
        "purchase_sold_out",
        &purchase_call(sold_out.id),
        Some(&tokens),
        Expect::SoldOut,
        secs,
    );
    let (c, r) = run_phase(conns, phase, true, pid).await?;
    drop(c);
    let gone = r.expect("recorded");
    print_phase(&gone);

    let final_sell = verify::wait_for_drain(&api, selling.id, drain_timeout).await?;
    let final_b = verify::wait_for_drain(&api, sold_out.id, drain_timeout).await?;
    let persisted = Persisted {
        selling_drained: drain.drained,
        selling_drain_secs: drain.secs,
        selling_sold: final_sell.event.sold,
        selling_failed: final_sell.event.failed,
        selling_stock_left: final_sell.event.stock_left,
        sold_out_event_sold: final_b.event.sold,
        orders: final_sell.event.sold + final_b.event.sold,
    };
    if persisted.selling_sold != sell.ok as i64 {
        warnings.push(format!(
            "{} purchases were accepted (202) in the selling phase but {} units are persisted as sold ({} failed)",
            sell.ok, persisted.selling_sold, persisted.selling_failed
        ));
    }
    if final_b.event.sold != 1 {
        warnings.push(format!(
            "the sold-out event has {} units sold, expected 1",
            final_b.event.sold
        ));
    }
    for p in [&health, &sell, &gone] {
        if let Some(other) = p.cpu.other_cores.filter(|&o| o > OTHER_LOAD_WARN) {
            disturbed += 1;
            warnings.push(format!(
                "{}: other processes used {other:.2} cores of the box during the phase: the figures are disturbed",
                p.name
            ));
        }
    }
    for p in [&health, &sell, &gone] {
        let bad: u64 = p.other.values().sum();
        if bad > 0 {
            warnings.push(format!(
                "{}: {bad} of {} answers did not count: {:?}",
                p.name, p.requests, p.other
            ));
        }
    }

    let ratio = |x: f64| {
        if health.rps > 0.0 {
            x / health.rps
        } else {
            0.0
        }
    };
    let ratio_selling = ratio(sell.rps);
    let ratio_sold_out = ratio(gone.rps);
    let p99 = sell.p99_ms.max(gone.p99_ms);
    let targets = vec![
        TargetReport {
            name: "purchase_selling_ratio",
            target: format!(">= {TARGET_RATIO_SELLING}"),
            value: ratio_selling,
            met: ratio_selling >= TARGET_RATIO_SELLING,
        },
        TargetReport {
            name: "purchase_sold_out_ratio",
            target: format!(">= {TARGET_RATIO_SOLD_OUT}"),
            value: ratio_sold_out,
            met: ratio_sold_out >= TARGET_RATIO_SOLD_OUT,
        },
        TargetReport {
            name: "purchase_p99_ms",
            target: format!("<= {TARGET_P99_MS} at {n} connections"),
            value: p99,
            met: p99 <= TARGET_P99_MS && n >= 64,
        },
    ];
    let all_met = targets.iter().all(|t| t.met);
    let report = BenchReport {
        started_at,
        base_url,
        client: args.client,
        cpus,
        connections: n,
        phase_secs: args.phase_secs,
        healthz_rps: health.rps,
        healthz_p50_ms: health.p50_ms,
        healthz_p99_ms: health.p99_ms,
        selling_rps: sell.rps,
        selling_p50_ms: sell.p50_ms,
        selling_p99_ms: sell.p99_ms,
        sold_out_rps: gone.rps,
        sold_out_p50_ms: gone.p50_ms,
        sold_out_p99_ms: gone.p99_ms,
        ratio_selling,
        ratio_sold_out,
        targets,
        all_met,
        setup: Setup {
            users,
            sign_secs,
            sign_us_per_token: sign_us,
            signed_inline: tokens.inline.load(Ordering::Relaxed),
            seed_secs,
            selling_event_id: selling.id,
            sold_out_event_id: sold_out.id,
        },
        persisted,
        phases: vec![health, sell, gone],
        warnings,
    };
    let path = args.out_dir.join("bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    print!("{}", render(&report));
    println!("bench: wrote {}", path.display());
    Ok(report.warnings.len() == disturbed)
}

fn print_phase(p: &PhaseReport) {
    println!(
        "bench:   {:<18} {:>9.0} req/s counted ({} of {} answers were {}), p50 {:.2} ms, p99 {:.2} ms",
        p.name, p.rps, p.ok, p.requests, p.counted, p.p50_ms, p.p99_ms
    );
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

pub fn render(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "== seckill bench: {} connections, {}s per phase, {} client, {} CPUs ==",
        r.connections,
        r.phase_secs,
        match r.client {
            ClientKind::Hyper => "hyper",
            ClientKind::Reqwest => "reqwest",
        },
        r.cpus
    );
    let _ = writeln!(
        s,
        "{:<18} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "phase", "req/s", "ratio", "p50 ms", "p90 ms", "p99 ms", "max ms", "client µs", "engine µs"
    );
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
    for p in &r.phases {
        let ratio = if r.healthz_rps > 0.0 {
            p.rps / r.healthz_rps
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "{:<18} {:>10.0} {:>7.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>10}",
            p.name,
            p.rps,
            ratio,
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
        "orders persisted during bench: {} (selling event: {} sold, {} failed, drained {} in {:.2}s after its phase; sold-out event: {})",
        r.persisted.orders,
        r.persisted.selling_sold,
        r.persisted.selling_failed,
        if r.persisted.selling_drained { "yes" } else { "NO" },
        r.persisted.selling_drain_secs,
        r.persisted.sold_out_event_sold
    );
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
