//! The validated scenario run: a named scenario gives every knob a default,
//! flags override single knobs, `--rate` or `--stages` make the crowd an open
//! model with a [`Schedule`], and [`Plan`] is the result the rest of the
//! crate reads. Also where shopper id ranges come from.

use std::path::PathBuf;

use anyhow::{bail, ensure};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    cli::{RunArgs, Scenario},
    schedule::Schedule,
    threshold::Threshold,
};

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
    /// Share of acknowledged purchases cancelled by their shopper.
    pub cancel_share: f64,
    pub start_delay_ms: u64,
}

impl Knobs {
    /// What a named scenario means before any flag overrides it.
    fn of(scenario: Scenario) -> Self {
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
            cancel_share: 0.0,
            start_delay_ms: 2_000,
        };
        match scenario {
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
            Scenario::RefundStorm => Knobs {
                users: 20_000,
                requests: 40_000,
                per_user_limit: 2,
                cancel_share: 0.3,
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

    /// The scenario's knobs with the command line's overrides.
    fn from_args(args: &RunArgs) -> Self {
        let d = Knobs::of(args.scenario);
        Knobs {
            users: args.users.unwrap_or(d.users),
            requests: args.requests.unwrap_or(d.requests),
            concurrency: args.concurrency.unwrap_or(d.concurrency),
            rate: args.rate.unwrap_or(d.rate),
            duration_secs: args.duration_secs.unwrap_or(d.duration_secs),
            stock: args.stock.unwrap_or(d.stock),
            price: args.price.unwrap_or(d.price),
            per_user_limit: args.per_user_limit.unwrap_or(d.per_user_limit),
            quantity: args.quantity.unwrap_or(d.quantity),
            cannot_pay_share: args.cannot_pay_share.unwrap_or(d.cannot_pay_share),
            retry_share: args.retry_share.unwrap_or(d.retry_share),
            duplicate_share: args.duplicate_share.unwrap_or(d.duplicate_share),
            cancel_share: args.cancel_share.unwrap_or(d.cancel_share),
            start_delay_ms: args.start_delay_ms.unwrap_or(d.start_delay_ms),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=MAX_USERS).contains(&self.users),
            "--users must be in 1..={MAX_USERS}"
        );
        ensure!(self.requests >= 1, "--requests must be at least 1");
        ensure!(
            (1..=4096).contains(&self.concurrency),
            "--concurrency must be in 1..=4096"
        );
        ensure!(
            self.duration_secs >= 1,
            "--duration-secs must be at least 1"
        );
        ensure!(self.stock >= 1, "--stock must be at least 1");
        ensure!(self.price >= 0, "--price must not be negative");
        ensure!(
            self.per_user_limit >= 1,
            "--per-user-limit must be at least 1"
        );
        ensure!(
            (1..=self.per_user_limit).contains(&self.quantity),
            "--quantity must be in 1..=per-user-limit ({})",
            self.per_user_limit
        );
        for (name, share) in [
            ("--cannot-pay-share", self.cannot_pay_share),
            ("--retry-share", self.retry_share),
            ("--duplicate-share", self.duplicate_share),
            ("--cancel-share", self.cancel_share),
        ] {
            ensure!((0.0..=1.0).contains(&share), "{name} must be in 0..=1");
        }
        ensure!(
            self.retry_share + self.duplicate_share <= 1.0,
            "--retry-share + --duplicate-share must not exceed 1"
        );
        Ok(())
    }
}

/// The validated run: scenario defaults with the command line's overrides.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub base_url: String,
    #[serde(flatten)]
    pub knobs: Knobs,
    pub first_user_id: Option<i64>,
    /// When each request is due (open model); `None`: a closed loop.
    pub schedule: Option<Schedule>,
    /// Open model: how late a request may be sent before it is dropped.
    pub max_lag_ms: u64,
    pub thresholds: Vec<Threshold>,
    pub timeout_ms: u64,
    pub drain_timeout_secs: u64,
    /// Stock buckets of the event (`None`: not sent, the engine's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_buckets: Option<u32>,
    #[serde(skip)]
    pub database_url: String,
    /// Where the engine's order events are read back (`None`: not checked).
    #[serde(skip)]
    pub order_stream: Option<OrderStream>,
    pub out_dir: PathBuf,
    #[serde(skip)]
    pub admin_token: String,
    #[serde(skip)]
    pub jwt_secret: String,
}

/// The engine's order events in NATS JetStream (its outbox relay's stream).
#[derive(Debug, Clone)]
pub struct OrderStream {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
}

/// Shopper ids a run may use: `first_user_id + users` must stay a valid id.
pub const MAX_USERS: u64 = 10_000_000;

/// The first shopper id of a run: the given one, or a fresh range per second
/// (wide enough for any `--users`), so wallets and per-user limits of earlier
/// runs never interfere.
pub fn first_user_id(given: Option<i64>, started_at: DateTime<Utc>) -> i64 {
    given.unwrap_or_else(|| started_at.timestamp() * MAX_USERS as i64 + 1)
}

impl Plan {
    /// Applies the flags to the scenario's knobs and checks the result.
    pub fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let mut knobs = Knobs::from_args(&args);
        let schedule = match (&args.stages, knobs.rate) {
            (Some(stages), _) => Some(stages.clone()),
            (None, 0) => None,
            (None, rate) => Some(Schedule::constant(rate, knobs.duration_secs.max(1))?),
        };
        if let Some(s) = &schedule {
            // The schedule bounds the budget; `--stages` also sets the length.
            let budget = if args.stages.is_some() {
                args.requests
            } else {
                Some(knobs.requests)
            };
            knobs.requests = budget.map_or(s.total(), |r| r.min(s.total()));
            knobs.duration_secs = s.secs().ceil() as u64;
        }
        knobs.check()?;
        ensure!(args.max_lag_ms >= 1, "--max-lag-ms must be at least 1");
        if let Some(first) = args.first_user_id {
            ensure!(first >= 1, "--first-user-id must be at least 1");
            ensure!(
                first.checked_add(knobs.users as i64).is_some(),
                "--first-user-id + --users overflows a user id"
            );
        }
        let engine = args.engine;
        if !engine.base_url.starts_with("http://") {
            bail!("--base-url must be an http:// URL (this client speaks plain HTTP)");
        }
        engine.check_secrets()?;
        Ok(Self {
            scenario: args.scenario,
            base_url: engine.base_url.trim_end_matches('/').to_owned(),
            knobs,
            first_user_id: args.first_user_id,
            schedule,
            max_lag_ms: args.max_lag_ms,
            thresholds: args.thresholds,
            timeout_ms: args.timeout_ms.max(1),
            drain_timeout_secs: args.drain_timeout_secs,
            stock_buckets: args.stock_buckets,
            database_url: args.database_url,
            order_stream: (!matches!(args.nats_url.trim(), "" | "off")).then(|| OrderStream {
                url: args.nats_url.trim().to_owned(),
                stream: args.nats_stream,
                subject_prefix: args.nats_subject_prefix,
            }),
            out_dir: args.out_dir,
            admin_token: engine.admin_token,
            jwt_secret: engine.jwt_secret,
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
    use crate::cli::Mode;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "seckill-loadtest",
            "--admin-token",
            "0123456789abcdef",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ];
        argv.extend_from_slice(extra);
        match Mode::try_parse_from(argv).unwrap() {
            Mode::Run(args) => *args,
            Mode::Bench(_) | Mode::Stalls(_) | Mode::Fill(_) => unreachable!("no subcommand given"),
        }
    }

    #[test]
    fn scenario_defaults_and_overrides() {
        let plan = Plan::from_args(args(&["--scenario", "sellout-storm", "--stock", "7"])).unwrap();
        assert_eq!(plan.knobs.users, 200_000);
        assert_eq!(plan.knobs.requests, 1_000_000);
        assert_eq!(plan.knobs.stock, 7);
        assert!(plan.schedule.is_none());

        let plan = Plan::from_args(args(&["--scenario", "slow-payers", "--users", "10"])).unwrap();
        assert_eq!(plan.payers(), 7);
    }

    #[test]
    fn rate_and_stages_set_the_budget() {
        // --rate keeps the scenario's budget when it is the smaller.
        let plan = Plan::from_args(args(&["--rate", "10000"])).unwrap();
        assert_eq!(plan.knobs.requests, 100_000);
        assert_eq!(plan.schedule.unwrap().total(), 200_000);
        let plan = Plan::from_args(args(&["--rate", "100", "--duration-secs", "3"])).unwrap();
        assert_eq!(plan.knobs.requests, 300);
        // --stages set both; --requests may only lower the budget.
        let plan = Plan::from_args(args(&["--stages", "2s:0->1000,1.5s:1000"])).unwrap();
        assert_eq!(plan.knobs.requests, 2_500);
        assert_eq!(plan.knobs.duration_secs, 4);
        let plan = Plan::from_args(args(&["--stages", "2s:1000", "--requests", "50"])).unwrap();
        assert_eq!(plan.knobs.requests, 50);
    }

    #[test]
    fn stages_and_thresholds_are_checked_on_the_command_line() {
        let plan = Plan::from_args(args(&[
            "--stages=1s:0->100,1s:100",
            "--threshold=p99<5ms",
            "--threshold",
            "errors<0.1%",
        ]))
        .unwrap();
        assert_eq!(plan.knobs.requests, 150);
        assert_eq!(plan.thresholds.len(), 2);
        let parse = |extra: &[&str]| {
            let argv = ["seckill-loadtest", "--admin-token=t", "--jwt-secret=s"];
            Mode::try_parse_from(argv.iter().chain(extra)).unwrap_err()
        };
        let err = parse(&["--stages=1s:100", "--rate=5"]);
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse(&["--threshold=p99<5%"]);
        assert!(
            err.to_string().contains("a latency is in us, ms or s"),
            "{err}"
        );
        let err = parse(&["--stages=10s"]);
        assert!(err.to_string().contains("DURATION:RATE"), "{err}");
    }

    #[test]
    fn rejects_inconsistent_knobs() {
        assert!(Plan::from_args(args(&["--quantity", "3"])).is_err());
        assert!(
            Plan::from_args(args(&["--retry-share", "0.7", "--duplicate-share", "0.5"])).is_err()
        );
        assert!(Plan::from_args(args(&["--base-url", "https://x"])).is_err());
        assert!(Plan::from_args(args(&["--rate", "10", "--max-lag-ms", "0"])).is_err());
    }
}
