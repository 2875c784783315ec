//! The command line, every flag of it: the scenario run (no subcommand) and
//! `bench`, each with the engine arguments they share flattened in once, and
//! the exit codes. Plain clap types; what the values mean is for the modules
//! that read them.

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::ensure;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{schedule::Schedule, threshold::Threshold};

/// Drives a flash sale against a running seckill engine through its HTTP API,
/// then verifies the outcome (engine invariants + client-side truths) and
/// writes a report and a chart.
///
/// `seckill-loadtest bench` runs the macro benchmark instead (SPEC §7).
#[derive(Debug, Parser)]
#[command(
    name = "seckill-loadtest",
    version,
    about,
    after_long_help = EXIT_CODES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  every check passed and every --threshold (bench: SPEC §7 target) was met
  1  a verification check failed (bench: something other than speed was wrong)
  2  the run could not happen (bad flags, engine unreachable, I/O error)
  3  the checks passed but a --threshold (bench: a SPEC §7 target) was not met";

/// What the command line asks for.
#[derive(Debug)]
pub enum Mode {
    /// A flash-sale scenario.
    Run(Box<RunArgs>),
    /// The macro benchmark.
    Bench(Box<BenchArgs>),
    /// The machine stall probe.
    Stalls(StallArgs),
    /// A sale bought by many distinct shoppers, fast.
    Fill(Box<FillArgs>),
}

impl Mode {
    /// The mode of this process's arguments; exits with usage on a bad one.
    pub fn parse() -> Self {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Reads the flags of the mode asked for only: the scenario's required
    /// secrets are not demanded when a subcommand brings its own.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cmd = Cli::command();
        let mut matches = cmd.try_get_matches_from_mut(args)?;
        let mode = if matches.subcommand_name().is_some() {
            Command::from_arg_matches_mut(&mut matches).map(|c| match c {
                Command::Bench(b) => Mode::Bench(b),
                Command::Stalls(s) => Mode::Stalls(s),
                Command::Fill(f) => Mode::Fill(f),
            })
        } else {
            RunArgs::from_arg_matches_mut(&mut matches).map(|r| Mode::Run(Box::new(r)))
        };
        mode.map_err(|err| err.format(&mut cmd))
    }
}

/// How a run ended, as the process's exit code (listed in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every check passed, every threshold or target was met.
    Pass = 0,
    /// A verification check failed.
    CheckFailed = 1,
    /// The run could not happen.
    Error = 2,
    /// The checks passed, a threshold or target was not met.
    TargetMissed = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Modes other than a flash-sale scenario.
#[derive(Debug, Subcommand)]
enum Command {
    /// Macro benchmark: `/healthz` ceiling, purchases while stock lasts and
    /// after sell-out, as ratios with p99 latencies; writes bench.json.
    Bench(Box<BenchArgs>),
    /// Machine stall probe: sleeps `--period-us` in a loop and prints every
    /// wakeup later than `--threshold-us` ("<unix µs> <label> <late µs>"),
    /// until killed. Run it pinned to one CPU at a real-time priority above
    /// the process under test (`taskset -c 0 chrt -f 20 ...`): it is then
    /// late only when that CPU ran nothing else (the vCPU was not running,
    /// or the kernel would not let go), never because of a user-space task.
    Stalls(StallArgs),
    /// A sale bought by `--buyers` distinct shoppers, one unit each, as fast
    /// as `--connections` keep-alive connections go (the benchmark's lean
    /// client, tokens signed on the fly, no per-answer bookkeeping), then
    /// drained and checked by the engine's invariant checker (unless
    /// `--no-invariants`): the set-up of
    /// a sale of millions of buyers for `scripts/bench-bigsale.sh`. Prints
    /// one JSON line: {event_id, buyers, accepted, secs, rps, drain_secs}.
    Fill(Box<FillArgs>),
}

/// Flags of `fill`.
#[derive(Debug, Clone, Args)]
pub struct FillArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Distinct shoppers, each buying one unit (the stock).
    #[arg(long)]
    pub buyers: u64,
    /// Keep-alive connections, each driven by one task in a closed loop.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// First shopper id; default derives a fresh range from the clock.
    #[arg(long)]
    pub first_user_id: Option<i64>,
    /// Longest wait for the writers to drain after the last purchase.
    #[arg(long, default_value_t = 1_800)]
    pub drain_timeout_secs: u64,
    /// Skip the invariant checker at the end (the caller runs it; over
    /// millions of orders its Postgres side takes minutes).
    #[arg(long)]
    pub no_invariants: bool,
}

/// Flags of `stalls`.
#[derive(Debug, Clone, Args)]
pub struct StallArgs {
    /// Sleep between two wakeups (µs).
    #[arg(long, default_value_t = 250)]
    pub period_us: u64,
    /// Print wakeups later than this (µs).
    #[arg(long, default_value_t = 500)]
    pub threshold_us: u64,
    /// Label printed on every line (the CPU it is pinned to).
    #[arg(long, default_value = "cpu")]
    pub label: String,
}

/// How to reach the engine and act on it: the same flags in every mode.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Engine base URL.
    #[arg(
        long,
        env = "SECKILL_LOADTEST_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base_url: String,

    // The secrets come last in --help, after the mode's own flags.
    /// Operator token of the engine.
    #[arg(
        long,
        env = "SECKILL_ADMIN_TOKEN",
        hide_env_values = true,
        display_order = 900
    )]
    pub admin_token: String,

    /// HS256 secret the engine verifies shopper tokens with.
    #[arg(
        long,
        env = "SECKILL_JWT_SECRET",
        hide_env_values = true,
        display_order = 901
    )]
    pub jwt_secret: String,
}

impl EngineArgs {
    /// Refuses secrets that cannot be the engine's: every request would fail.
    pub fn check_secrets(&self) -> anyhow::Result<()> {
        ensure!(
            self.jwt_secret.len() >= 32,
            "SECKILL_JWT_SECRET must be the engine's secret (at least 32 bytes)"
        );
        ensure!(
            !self.admin_token.is_empty(),
            "SECKILL_ADMIN_TOKEN must be the engine's operator token"
        );
        Ok(())
    }
}

/// One flash sale: a named scenario and single knobs overriding it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Named crowd; the flags below override single knobs of it.
    #[arg(long, env = "SECKILL_LOADTEST_SCENARIO", value_enum, default_value_t = Scenario::Burst)]
    pub scenario: Scenario,

    /// Distinct simulated shoppers.
    #[arg(long)]
    pub users: Option<u64>,
    /// Purchase HTTP requests to send in total (retries and duplicates count).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Concurrent workers, each one keep-alive connection; with --rate or
    /// --stages, the most requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open model at a constant rate: requests due at fixed times, this many
    /// per second across all workers, for --duration-secs; 0 = closed loop
    /// (each worker sends as soon as its previous answer is in).
    ///
    /// Latency is measured from each request's due time, not from when a
    /// connection became free (coordinated omission corrected, as wrk2 and
    /// k6's arrival-rate executors do).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open model in stages: comma-separated `DURATION:RATE` (hold) or
    /// `DURATION:FROM->TO` (linear ramp), durations in ms, s or m, rates in
    /// requests/s (`20k` = 20000).
    ///
    /// Example: `10s:0->20000,20s:20000,5s:20000->80000` ramps up over 10 s,
    /// holds 20 s, then spikes. The stages set the run's length and its
    /// request budget (--requests may only lower it). Latency as with --rate.
    #[arg(long, value_parser = parse_stages, conflicts_with_all = ["rate", "duration_secs"])]
    pub stages: Option<Schedule>,
    /// Open model: a request not sent within this many ms of its due time
    /// (every connection busy) is dropped, counted and reported as such.
    #[arg(long, default_value_t = 1_000)]
    pub max_lag_ms: u64,
    /// Stop firing after this many seconds even if requests are left.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Units of stock in the sale.
    #[arg(long)]
    pub stock: Option<i64>,
    /// Stock buckets of the sale's event (`"stock_buckets"` in
    /// `POST /admin/events`); absent: not sent, the engine's default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub stock_buckets: Option<u32>,
    /// Unit price in minor units (cents).
    #[arg(long)]
    pub price: Option<i64>,
    /// Most units one shopper may buy.
    #[arg(long)]
    pub per_user_limit: Option<i64>,
    /// Units per purchase request.
    #[arg(long)]
    pub quantity: Option<i64>,
    /// Share (0..=1) of shoppers whose wallet is empty, so their orders fail.
    #[arg(long)]
    pub cannot_pay_share: Option<f64>,
    /// Share (0..=1) of attempts sent twice with the same Idempotency-Key.
    #[arg(long)]
    pub retry_share: Option<f64>,
    /// Share (0..=1) of attempts fired twice at once without a key (double click).
    #[arg(long)]
    pub duplicate_share: Option<f64>,
    /// Share (0..=1) of acknowledged purchases their shopper cancels right
    /// away (`POST /api/orders/{order_no}/cancel`, retried while
    /// `order_pending`); the sale is created with a cancellation window.
    #[arg(long)]
    pub cancel_share: Option<f64>,
    /// How far in the future the sale starts, counted from its creation.
    #[arg(long)]
    pub start_delay_ms: Option<u64>,
    /// First shopper id; default derives a fresh range from the clock.
    #[arg(long)]
    pub first_user_id: Option<i64>,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Longest wait for the writers to drain (`pending` = 0) after firing.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
    /// Pass/fail criterion on the run's figures, repeatable:
    /// `METRIC OP VALUE[UNIT]`, judged at the end; a miss exits with 3.
    ///
    /// Metrics: latency `p50`, `p90`, `p95`, `p99`, `p99.9` (any `pN` or
    /// `p(N)`), `max`, `mean`, in ms unless `us`/`s` is written; `errors`
    /// (5xx including 503, timeouts, transport errors; 409 and 429 are answers,
    /// not errors) as a count or, with `%`, a share of the answers; `dropped`
    /// as a count or a share of the scheduled requests; `rps` (answers/s).
    /// OP: `<`, `<=`, `>`, `>=`, `==`. Example: `--threshold 'p99<5ms'
    /// --threshold 'errors<0.1%'`.
    #[arg(long = "threshold", value_name = "EXPR", value_parser = parse_threshold)]
    pub thresholds: Vec<Threshold>,

    /// Postgres, read-only, for client-side verification.
    #[arg(
        long,
        env = "SECKILL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/seckill"
    )]
    pub database_url: String,

    /// NATS server whose JetStream holds the engine's order events
    /// (the outbox relay's); `off` skips the stream check.
    #[arg(
        long,
        env = "SECKILL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The engine's order-event stream.
    #[arg(long, env = "SECKILL_NATS_STREAM", default_value = "SECKILL_ORDERS")]
    pub nats_stream: String,
    /// The engine's subject prefix: events are `<prefix>.<event_id>.<kind>`.
    #[arg(
        long,
        env = "SECKILL_NATS_SUBJECT_PREFIX",
        default_value = "seckill.orders"
    )]
    pub nats_subject_prefix: String,

    /// Where report-<scenario>.json and chart-<scenario>.svg go.
    #[arg(long, env = "SECKILL_LOADTEST_OUT_DIR", default_value = "loadtest/out")]
    pub out_dir: PathBuf,
}

fn parse_stages(text: &str) -> Result<Schedule, String> {
    Schedule::parse(text).map_err(|err| format!("{err:#}"))
}

fn parse_watch_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("`{text}`: the pid is not a number"))?;
    if name.is_empty() {
        return Err(format!("`{text}`: the name is empty"));
    }
    Ok((name.to_owned(), pid))
}

fn parse_threshold(text: &str) -> Result<Threshold, String> {
    Threshold::parse(text).map_err(|err| format!("{err:#}"))
}

/// The named crowds of issue 4, plus a tiny one for quick checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Stock 1 000, 100 000 shoppers, 64 connections, 20 s.
    Burst,
    /// Stock 10 000, 200 000 shoppers, 1 000 000 requests.
    SelloutStorm,
    /// Like burst, but 30 % of shoppers cannot pay.
    SlowPayers,
    /// Idempotency-Key retries and double clicks.
    RetryStorm,
    /// Stock 50, 500 shoppers, 16 connections.
    Smoke,
    /// Like burst with 20 000 shoppers, per-user limit 2: 30 % of the
    /// purchases are cancelled while the crowd keeps buying, so the
    /// returned units are sold again.
    RefundStorm,
}

impl Scenario {
    /// The name on the command line, in file names and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::SelloutStorm => "sellout-storm",
            Scenario::SlowPayers => "slow-payers",
            Scenario::RetryStorm => "retry-storm",
            Scenario::Smoke => "smoke",
            Scenario::RefundStorm => "refund-storm",
        }
    }
}

/// Macro benchmark: `/healthz` ceiling, purchases while stock lasts and after
/// sell-out, as ratios to the ceiling with p99 latencies (SPEC §7).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
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
    /// Stock buckets of the selling event (`"stock_buckets"` in
    /// `POST /admin/events`); absent: not sent, the engine's default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub stock_buckets: Option<u32>,
    /// Engine process id, to report its CPU use per phase (from /proc).
    #[arg(long)]
    pub engine_pid: Option<u32>,
    /// Another process to report per phase, `NAME=PID` (repeatable): its
    /// utime+stime in clock ticks over each phase, in `cpu.watched`.
    #[arg(long = "watch-pid", value_name = "NAME=PID", value_parser = parse_watch_pid)]
    pub watch_pids: Vec<(String, u32)>,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Longest wait for the writers to drain after a purchase phase.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
    /// Where bench.json goes.
    #[arg(long, env = "SECKILL_LOADTEST_OUT_DIR", default_value = "loadtest/out")]
    pub out_dir: PathBuf,
    /// Cost ablation: the engine runs `seckill serve --ablation LAYER`. Only
    /// `/healthz` and the selling phase are measured, every purchase with a
    /// fresh `Idempotency-Key`, nothing is drained (below `full` nothing is
    /// persisted); writes ablation-LAYER.json instead of bench.json.
    #[arg(long, value_name = "LAYER")]
    pub ablation_layer: Option<String>,
}

/// The benchmark's HTTP client implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// One hyper HTTP/1.1 connection per task, no pool.
    Hyper,
    /// One shared reqwest client with a keep-alive pool.
    Reqwest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn stalls_takes_no_secrets_and_has_its_defaults() {
        let mode = Mode::try_parse_from(["seckill-loadtest", "stalls", "--label", "cpu1"]).unwrap();
        let Mode::Stalls(args) = mode else {
            panic!("`stalls` parsed as another mode");
        };
        assert_eq!(
            (args.period_us, args.threshold_us, args.label.as_str()),
            (250, 500, "cpu1")
        );
    }

    #[test]
    fn bench_takes_its_secrets_without_the_scenario_demanding_them() {
        let mode = Mode::try_parse_from([
            "seckill-loadtest",
            "bench",
            "--admin-token",
            "0123456789abcdef",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--connections",
            "8",
        ])
        .unwrap_or_else(|err| panic!("{err}"));
        let Mode::Bench(args) = mode else {
            panic!("not bench: {mode:?}")
        };
        assert_eq!(args.engine.admin_token, "0123456789abcdef");
        assert_eq!(args.connections, 8);
    }
}
