//! One flash sale from start to verdict: fund the crowd's wallets, create and
//! preheat the event, wait for its start, let the crowd loose while polling
//! the stock, wait for the writers to drain, verify, report.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::{
    api::{Api, NewEvent, Signer},
    chart,
    config::{Plan, MAX_USERS},
    crowd::{poll_stock, Crowd, StockPoint},
    report::Report,
    stats,
    verify::{self, Setup, Verdict},
};

/// Wallets per seed call, so one call stays well inside its timeout.
const SEED_CHUNK: u64 = 50_000;

/// Runs the sale; `Ok(true)` when every check passed.
pub async fn run(plan: Plan) -> anyhow::Result<bool> {
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
    // A fresh id range per run (one per second, wide enough for any --users),
    // so wallets and per-user limits of earlier runs never interfere.
    let first_user_id = plan
        .first_user_id
        .unwrap_or_else(|| started_at.timestamp() * MAX_USERS as i64 + 1);
    let payers = plan.payers();
    let broke = k.users - payers;

    println!(
        "loadtest: funding {payers} wallets with {} and {broke} empty ones (shoppers {first_user_id}..{})",
        plan.funded_balance(),
        first_user_id + k.users as i64 - 1
    );
    let seeded = Instant::now();
    let mut created = seed(&api, first_user_id, payers, plan.funded_balance()).await?;
    created += seed(&api, first_user_id + payers as i64, broke, 0).await?;
    let fresh_wallets = created == k.users;
    if !fresh_wallets {
        println!(
            "loadtest: only {created} of {} wallets were new; the per-wallet money check is skipped",
            k.users
        );
    }
    check_balance(&api, first_user_id, plan.funded_balance()).await?;
    if broke > 0 {
        check_balance(&api, first_user_id + payers as i64, 0).await?;
    }
    println!(
        "loadtest: wallets ready in {:.2}s",
        seeded.elapsed().as_secs_f64()
    );

    let starts_at = Utc::now() + chrono::Duration::milliseconds(k.start_delay_ms as i64);
    let window = (k.duration_secs + 600).max(3_600);
    let ends_at = starts_at + chrono::Duration::seconds(window as i64);
    let name = format!(
        "loadtest {} {}",
        plan.scenario.name(),
        started_at.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let event = api
        .create_event(&NewEvent {
            name: &name,
            price: k.price,
            stock: k.stock,
            per_user_limit: k.per_user_limit,
            starts_at,
            ends_at,
        })
        .await?;
    if event.id <= 0 {
        bail!("POST /admin/events answered without an id");
    }
    api.preheat(event.id).await?;
    println!(
        "loadtest: event {} created and preheated; sale starts at {}",
        event.id,
        starts_at.to_rfc3339()
    );

    let signer = Arc::new(Signer::new(&plan.jwt_secret, first_user_id, k.users));
    let crowd = Arc::new(Crowd::new(
        Arc::clone(&api),
        Arc::clone(&signer),
        plan.clone(),
        first_user_id,
        event.id,
    )?);

    // A small margin after the start: the engine judges the window by Redis' clock.
    let start = Instant::now()
        + (starts_at - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_millis(20);
    // Open the keep-alive connections before the start, as a waiting crowd would.
    warm_up(&api, &plan.base_url, k.concurrency).await;
    let before = api
        .event(event.id)
        .await
        .ok()
        .map(|ev| StockPoint::of(&ev, 0.0));
    tokio::time::sleep_until(start.into()).await;

    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(poll_stock(Arc::clone(&api), event.id, t0, before, stop_rx));
    let bar = progress_bar(k.requests);
    let ticker = {
        let crowd = Arc::clone(&crowd);
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(crowd.progress.done.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "accepted {}",
                    crowd.progress.accepted.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let log = Arc::clone(&crowd).fire(t0).await;
    ticker.abort();
    bar.set_position(crowd.progress.done.load(Ordering::Relaxed));
    bar.finish_with_message(format!(
        "accepted {}",
        crowd.progress.accepted.load(Ordering::Relaxed)
    ));

    let stats = stats::compute(&log.samples);
    println!(
        "loadtest: {} requests answered; waiting for the writers to drain",
        stats.requests
    );
    let drain =
        verify::wait_for_drain(&api, event.id, Duration::from_secs(plan.drain_timeout_secs))
            .await?;
    // One more poll after the drain so the chart shows the final stock.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let _ = stop_tx.send(true);
    let stock = poller.await.unwrap_or_default();

    println!("loadtest: verifying");
    let setup = Setup {
        plan: &plan,
        event_id: event.id,
        first_user_id,
        fresh_wallets,
    };
    let checks = verify::verify(&api, &signer, &setup, &log, &drain).await;
    let passed = !checks.iter().any(|c| c.verdict == Verdict::Fail);

    let scenario = plan.scenario.name();
    let chart_path = plan.out_dir.join(format!("chart-{scenario}.svg"));
    let chart_path =
        match chart::render(&chart_path, &format!("seckill {scenario}"), &stats, &stock) {
            Ok(()) => Some(chart_path),
            Err(err) => {
                eprintln!("loadtest: could not draw the chart: {err:#}");
                None
            }
        };
    let report = Report {
        scenario,
        started_at,
        event_id: event.id,
        first_user_id,
        payers,
        shapes: log.shapes,
        unexpected: log
            .unexpected
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        stats,
        stock,
        drain,
        checks,
        passed,
        report_path: plan.out_dir.join(format!("report-{scenario}.json")),
        chart_path,
        plan,
    };
    report.write_json()?;
    print!("{}", report.render());
    Ok(passed)
}

/// Seeds `count` wallets from `first` in chunks; returns how many were new.
async fn seed(api: &Api, first: i64, count: u64, balance: i64) -> anyhow::Result<u64> {
    let mut created = 0;
    let mut done = 0;
    while done < count {
        let n = SEED_CHUNK.min(count - done);
        created += api.seed_wallets(first + done as i64, n, balance).await?;
        done += n;
    }
    Ok(created)
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
