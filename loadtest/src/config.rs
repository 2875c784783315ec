//! Command line and scenarios: a named scenario gives every knob a default,
//! flags override single knobs, and [`Plan`] is the validated result the rest
//! of the crate reads.

use std::path::PathBuf;

use anyhow::{bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
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

    /// Engine base URL.
    #[arg(
        long,
        env = "SECKILL_LOADTEST_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base_url: String,

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

    /// Operator token of the engine.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// HS256 secret the engine verifies shopper tokens with.
    #[arg(long, env = "SECKILL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

/// Modes other than a flash-sale scenario.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Macro benchmark: `/healthz` ceiling, purchases while stock lasts and
    /// after sell-out, as ratios with p99 latencies; writes bench.json.
    Bench(Box<crate::bench::BenchArgs>),
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
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::SelloutStorm => "sellout-storm",
            Scenario::SlowPayers => "slow-payers",
            Scenario::RetryStorm => "retry-storm",
            Scenario::Smoke => "smoke",
        }
    }

    fn defaults(self) -> Knobs {
        let burst = Knobs {
            users: 100_000,
            requests: 100_000,
            concurrency: 64,
            rate: 0,
            duration_secs: 20,
            stock: 1_000,
            price: 9_900,
            per_user_limit: 1,
            quantity: 1,
            cannot_pay_share: 0.0,
            retry_share: 0.0,
            duplicate_share: 0.0,
            start_delay_ms: 2_000,
        };
        match self {
            Scenario::Burst => burst,
            Scenario::SelloutStorm => Knobs {
                users: 200_000,
                requests: 1_000_000,
                stock: 10_000,
                duration_secs: 300,
                ..burst
            },
            Scenario::SlowPayers => Knobs {
                users: 50_000,
                requests: 50_000,
                cannot_pay_share: 0.3,
                ..burst
            },
            Scenario::RetryStorm => Knobs {
                users: 20_000,
                requests: 60_000,
                per_user_limit: 2,
                retry_share: 0.3,
                duplicate_share: 0.2,
                ..burst
            },
            Scenario::Smoke => Knobs {
                users: 500,
                requests: 2_000,
                concurrency: 16,
                duration_secs: 10,
                stock: 50,
                price: 100,
                ..burst
            },
        }
    }
}

/// Every knob of a crowd.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Knobs {
    pub users: u64,
    pub requests: u64,
    pub concurrency: usize,
    pub rate: u64,
    pub duration_secs: u64,
    pub stock: i64,
    pub price: i64,
    pub per_user_limit: i64,
    pub quantity: i64,
    pub cannot_pay_share: f64,
    pub retry_share: f64,
    pub duplicate_share: f64,
    pub start_delay_ms: u64,
}

/// The validated run: scenario defaults with the command line's overrides.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub base_url: String,
    #[serde(flatten)]
    pub knobs: Knobs,
    pub first_user_id: Option<i64>,
    pub timeout_ms: u64,
    pub drain_timeout_secs: u64,
    #[serde(skip)]
    pub database_url: String,
    pub out_dir: PathBuf,
    #[serde(skip)]
    pub admin_token: String,
    #[serde(skip)]
    pub jwt_secret: String,
}

/// Shopper ids a run may use: `first_user_id + users` must stay a valid id.
pub const MAX_USERS: u64 = 10_000_000;

impl Plan {
    pub fn from_cli(cli: Cli) -> anyhow::Result<Self> {
        let d = cli.scenario.defaults();
        let knobs = Knobs {
            users: cli.users.unwrap_or(d.users),
            requests: cli.requests.unwrap_or(d.requests),
            concurrency: cli.concurrency.unwrap_or(d.concurrency),
            rate: cli.rate.unwrap_or(d.rate),
            duration_secs: cli.duration_secs.unwrap_or(d.duration_secs),
            stock: cli.stock.unwrap_or(d.stock),
            price: cli.price.unwrap_or(d.price),
            per_user_limit: cli.per_user_limit.unwrap_or(d.per_user_limit),
            quantity: cli.quantity.unwrap_or(d.quantity),
            cannot_pay_share: cli.cannot_pay_share.unwrap_or(d.cannot_pay_share),
            retry_share: cli.retry_share.unwrap_or(d.retry_share),
            duplicate_share: cli.duplicate_share.unwrap_or(d.duplicate_share),
            start_delay_ms: cli.start_delay_ms.unwrap_or(d.start_delay_ms),
        };
        ensure!(
            (1..=MAX_USERS).contains(&knobs.users),
            "--users must be in 1..={MAX_USERS}"
        );
        ensure!(knobs.requests >= 1, "--requests must be at least 1");
        ensure!(
            (1..=4096).contains(&knobs.concurrency),
            "--concurrency must be in 1..=4096"
        );
        ensure!(
            knobs.duration_secs >= 1,
            "--duration-secs must be at least 1"
        );
        ensure!(knobs.stock >= 1, "--stock must be at least 1");
        ensure!(knobs.price >= 0, "--price must not be negative");
        ensure!(
            knobs.per_user_limit >= 1,
            "--per-user-limit must be at least 1"
        );
        ensure!(
            (1..=knobs.per_user_limit).contains(&knobs.quantity),
            "--quantity must be in 1..=per-user-limit ({})",
            knobs.per_user_limit
        );
        for (name, share) in [
            ("--cannot-pay-share", knobs.cannot_pay_share),
            ("--retry-share", knobs.retry_share),
            ("--duplicate-share", knobs.duplicate_share),
        ] {
            ensure!((0.0..=1.0).contains(&share), "{name} must be in 0..=1");
        }
        ensure!(
            knobs.retry_share + knobs.duplicate_share <= 1.0,
            "--retry-share + --duplicate-share must not exceed 1"
        );
        if let Some(first) = cli.first_user_id {
            ensure!(first >= 1, "--first-user-id must be at least 1");
            ensure!(
                first.checked_add(knobs.users as i64).is_some(),
                "--first-user-id + --users overflows a user id"
            );
        }
        if !cli.base_url.starts_with("http://") {
            bail!("--base-url must be an http:// URL (this client speaks plain HTTP)");
        }
        ensure!(
            cli.jwt_secret.len() >= 32,
            "SECKILL_JWT_SECRET must be the engine's secret (at least 32 bytes)"
        );
        ensure!(
            !cli.admin_token.is_empty(),
            "SECKILL_ADMIN_TOKEN must be the engine's operator token"
        );
        Ok(Self {
            scenario: cli.scenario,
            base_url: cli.base_url.trim_end_matches('/').to_owned(),
            knobs,
            first_user_id: cli.first_user_id,
            timeout_ms: cli.timeout_ms.max(1),
            drain_timeout_secs: cli.drain_timeout_secs,
            database_url: cli.database_url,
            out_dir: cli.out_dir,
            admin_token: cli.admin_token,
            jwt_secret: cli.jwt_secret,
        })
    }

    /// Shoppers whose wallet is funded; the rest get an empty wallet.
    pub fn payers(&self) -> u64 {
        let k = &self.knobs;
        let broke = (k.users as f64 * k.cannot_pay_share).round() as u64;
        k.users - broke.min(k.users)
    }

    /// What one funded wallet holds: enough for the whole per-user limit.
    pub fn funded_balance(&self) -> i64 {
        self.knobs.price.saturating_mul(self.knobs.per_user_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(extra: &[&str]) -> Cli {
        let mut args = vec![
            "seckill-loadtest",
            "--admin-token",
            "0123456789abcdef",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn scenario_defaults_and_overrides() {
        let plan = Plan::from_cli(cli(&["--scenario", "sellout-storm", "--stock", "7"])).unwrap();
        assert_eq!(plan.knobs.users, 200_000);
        assert_eq!(plan.knobs.requests, 1_000_000);
        assert_eq!(plan.knobs.stock, 7);

        let plan = Plan::from_cli(cli(&["--scenario", "slow-payers", "--users", "10"])).unwrap();
        assert_eq!(plan.payers(), 7);
    }

    #[test]
    fn rejects_inconsistent_knobs() {
        assert!(Plan::from_cli(cli(&["--quantity", "3"])).is_err());
        assert!(
            Plan::from_cli(cli(&["--retry-share", "0.7", "--duplicate-share", "0.5"])).is_err()
        );
        assert!(Plan::from_cli(cli(&["--base-url", "https://x"])).is_err());
    }
}
