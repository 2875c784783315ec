//! The command line, every flag of it: the scenario run (no subcommand) and
//! `bench`, each with the engine arguments they share flattened in once.
//! Plain clap types; what the values mean is for the modules that read them.

use std::path::PathBuf;

use anyhow::ensure;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

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
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Modes other than a flash-sale scenario.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Macro benchmark: `/healthz` ceiling, purchases while stock lasts and
    /// after sell-out, as ratios with p99 latencies; writes bench.json.
    Bench(Box<BenchArgs>),
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
    /// Concurrent workers, each one keep-alive connection.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Target requests per second across all workers; 0 = as fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Stop firing after this many seconds even if requests are left.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Units of stock in the sale.
    #[arg(long)]
    pub stock: Option<i64>,
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

    /// Postgres, read-only, for client-side verification.
    #[arg(
        long,
        env = "SECKILL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/seckill"
    )]
    pub database_url: String,

    /// Where report-<scenario>.json and chart-<scenario>.svg go.
    #[arg(long, env = "SECKILL_LOADTEST_OUT_DIR", default_value = "loadtest/out")]
    pub out_dir: PathBuf,
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
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
