//! One flash sale from start to verdict: fund the crowd's wallets, create and
//! preheat the event, wait for its start, let the crowd loose while polling
//! the stock, wait for the writers to drain, verify, judge the thresholds,
//! report.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    api::{AdminEvent, Api, NewEvent, Signer},
    chart::Chart,
    cli::Exit,
    crowd::{Crowd, CrowdLog},
    drain::wait_for_drain,
    plan::{self, Plan},
    report::Report,
    stats,
    stock::{drained_at, poll_stock, StockPoint, POLL_EVERY},
    threshold::Judged,
    verify::{self, Setup, Verdict},
};

/// Wallets per seed call, so one call stays well inside its timeout.
const SEED_CHUNK: u64 = 50_000;

/// Runs the sale; how it ended: a failed check before a missed threshold.
pub async fn run(plan: Plan) -> anyhow::Result<Exit> {
    let k = plan.knobs;
    let api = Arc::new(Api::new(
        &plan.base_url,
        &plan.admin_token,
        k.concurrency * 2 + 8,
        Duration::from_millis(plan.timeout_ms),
    )?);
    api.ready().await?;
    std::fs::create_dir_all(&plan.out_dir)
        .with_context(|| format!("creating {}", plan.out_dir.display()))?;

    let started_at = Utc::now();
    let first_user_id = plan::first_user_id(plan.first_user_id, started_at);
    let fresh_wallets = fund_wallets(&api, &plan, first_user_id).await?;
    let (event, starts_at) = create_event(&api, &plan, started_at).await?;

    let signer = Arc::new(Signer::new(&plan.jwt_secret, first_user_id, k.users));
    let crowd = Arc::new(Crowd::new(
        Arc::clone(&api),
        Arc::clone(&signer),
        plan.clone(),
        first_user_id,
        event.id,
    )?);
    let (t0, log, poller) = fire(&api, &crowd, event.id, starts_at).await;

    let stats = stats::compute(&log.samples, &log.dropped, plan.schedule.is_some());
    println!(
        "loadtest: {} requests answered; waiting for the writers to drain",
        stats.requests
    );
    let drain =
        wait_for_drain(&api, event.id, Duration::from_secs(plan.drain_timeout_secs)).await?;
    let waited_secs = drain.drained.then(|| t0.elapsed().as_secs_f64());
    let stock = poller.finish().await;
    // The poller sees the drain as it happens, even while the crowd still
    // fires at a sold-out event; the wait above only sees its end.
    let drained_at_secs = stats
        .last_accept_secs
        .and_then(|t| drained_at(&stock, t).or(waited_secs));

    println!("loadtest: verifying");
    let setup = Setup {
        plan: &plan,
        event_id: event.id,
        first_user_id,
        fresh_wallets,
    };
    let checks = verify::verify(&api, &signer, &setup, &log, &drain).await;
    let passed = !checks.iter().any(|c| c.verdict == Verdict::Fail);
    let thresholds: Vec<Judged> = plan
        .thresholds
        .iter()
        .map(|t| t.judge(stats.measure(t.metric)))
        .collect();
    let exit = if !passed {
        Exit::CheckFailed
    } else if thresholds.iter().any(|t| !t.passed) {
        Exit::TargetMissed
    } else {
        Exit::Pass
    };

    let scenario = plan.scenario.name();
    let chart = Chart {
        title: &format!("seckill {scenario}"),
        stats: &stats,
        stock: &stock,
        schedule: plan.schedule.as_ref(),
        drained_at: drained_at_secs,
    };
    let chart_path = draw_chart(&plan.out_dir, scenario, &chart);
    let report = Report {
        scenario,
        started_at,
        event_id: event.id,
        first_user_id,
        payers: plan.payers(),
        shapes: log.shapes,
        unexpected: log
            .unexpected
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        stats,
        stock,
        drain,
        drained_at_secs,
        checks,
        passed,
        thresholds,
        exit_code: exit as u8,
        report_path: plan.out_dir.join(format!("report-{scenario}.json")),
        chart_path,
        plan,
    };
    report.write_json()?;
    print!("{}", report.render());
    Ok(exit)
}

/// Funds the payers' wallets and gives the rest an empty one; `Ok(true)`
/// when every wallet was new, so that initial balances are known.
async fn fund_wallets(api: &Api, plan: &Plan, first_user_id: i64) -> anyhow::Result<bool> {
    let k = plan.knobs;
    let payers = plan.payers();
    let broke = k.users - payers;
    println!(
        "loadtest: funding {payers} wallets with {} and {broke} empty ones (shoppers {first_user_id}..{})",
        plan.funded_balance(),
        first_user_id + k.users as i64 - 1
    );
    let seeded = Instant::now();
    let mut created = api
        .seed_wallets(first_user_id, payers, plan.funded_balance(), SEED_CHUNK)
        .await?;
    created += api
        .seed_wallets(first_user_id + payers as i64, broke, 0, SEED_CHUNK)
        .await?;
    let fresh_wallets = created == k.users;
    if !fresh_wallets {
        println!(
            "loadtest: only {created} of {} wallets were new; the per-wallet money check is skipped",
            k.users
        );
    }
    check_balance(api, first_user_id, plan.funded_balance()).await?;
    if broke > 0 {
        check_balance(api, first_user_id + payers as i64, 0).await?;
    }
    println!(
        "loadtest: wallets ready in {:.2}s",
        seeded.elapsed().as_secs_f64()
    );
    Ok(fresh_wallets)
}

async fn check_balance(api: &Api, user_id: i64, want: i64) -> anyhow::Result<()> {
    let got = api.wallet_balance(user_id).await?;
    if got != want {
        // A seed that kept an existing wallet's balance would make shoppers
        // pay (or not) against the plan, and the checks meaningless.
        bail!(
            "wallet {user_id} has balance {got} after seeding, expected {want}; \
             use a fresh --first-user-id range"
        );
    }
    Ok(())
}

/// Creates and preheats the sale's event; returns it and its start.
async fn create_event(
    api: &Api,
    plan: &Plan,
    started_at: DateTime<Utc>,
) -> anyhow::Result<(AdminEvent, DateTime<Utc>)> {
    let k = plan.knobs;
    let starts_at = Utc::now() + chrono::Duration::milliseconds(k.start_delay_ms as i64);
    let window = (k.duration_secs + 600).max(3_600);
    let ends_at = starts_at + chrono::Duration::seconds(window as i64);
    let name = format!(
        "loadtest {} {}",
        plan.scenario.name(),
        started_at.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let event = api
        .create_preheated_event(&NewEvent {
            name: &name,
            price: k.price,
            stock: k.stock,
            per_user_limit: k.per_user_limit,
            starts_at,
            ends_at,
            cancel_window_seconds: (k.cancel_share > 0.0).then_some(3_600),
            stock_buckets: plan.stock_buckets,
        })
        .await?;
    println!(
        "loadtest: event {} created and preheated; sale starts at {}",
        event.id,
        starts_at.to_rfc3339()
    );
    Ok((event, starts_at))
}

/// Waits for the sale's start with the connections open, then lets the crowd
/// loose with the stock poller and a progress bar running beside it; returns
/// the instant it let them loose (t = 0 of the figures).
async fn fire(
    api: &Arc<Api>,
    crowd: &Arc<Crowd>,
    event_id: i64,
    starts_at: DateTime<Utc>,
) -> (Instant, CrowdLog, Poller) {
    // A small margin after the start: the engine judges the window by Redis' clock.
    let start = Instant::now()
        + (starts_at - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_millis(20);
    // Open the keep-alive connections before the start, as a waiting crowd would.
    warm_up(api, &crowd.plan.base_url, crowd.plan.knobs.concurrency).await;
    let before = api
        .event(event_id)
        .await
        .ok()
        .map(|ev| StockPoint::of(&ev, 0.0));
    tokio::time::sleep_until(start.into()).await;

    let t0 = Instant::now();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(poll_stock(Arc::clone(api), event_id, t0, before, stop_rx));
    let bar = progress_bar(crowd.plan.knobs.requests);
    let ticker = {
        let crowd = Arc::clone(crowd);
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                show_progress(&bar, &crowd);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let log = Arc::clone(crowd).fire(t0).await;
    ticker.abort();
    show_progress(&bar, crowd);
    bar.finish();
    (t0, log, Poller { stop, task })
}

/// The running stock poller.
struct Poller {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<StockPoint>>,
}

impl Poller {
    /// Stops the poller after one more poll, so the chart shows the final
    /// stock; returns every point.
    async fn finish(self) -> Vec<StockPoint> {
        tokio::time::sleep(POLL_EVERY + Duration::from_millis(50)).await;
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Opens about `n` keep-alive connections with concurrent `/healthz` calls.
async fn warm_up(api: &Api, base_url: &str, n: usize) {
    let url = format!("{base_url}/healthz");
    let calls = (0..n).map(|_| api.get_ok(&url));
    futures::future::join_all(calls).await;
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} requests ({per_sec}) {msg}",
        )
        .expect("static progress template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn show_progress(bar: &ProgressBar, crowd: &Crowd) {
    let p = &crowd.progress;
    bar.set_position(p.done.load(Ordering::Relaxed) + p.dropped.load(Ordering::Relaxed));
    let dropped = p.dropped.load(Ordering::Relaxed);
    bar.set_message(format!(
        "accepted {}{}",
        p.accepted.load(Ordering::Relaxed),
        if dropped > 0 {
            format!(", dropped {dropped}")
        } else {
            String::new()
        }
    ));
}

/// Draws `chart-<scenario>.svg`; a chart that fails is reported, not fatal.
fn draw_chart(out_dir: &Path, scenario: &str, chart: &Chart<'_>) -> Option<PathBuf> {
    let path = out_dir.join(format!("chart-{scenario}.svg"));
    match chart.render(&path) {
        Ok(()) => Some(path),
        Err(err) => {
            eprintln!("loadtest: could not draw the chart: {err:#}");
            None
        }
    }
}
