//! `seckill-loadtest bench`: the macro benchmark of SPEC §7, all phases in
//! one run against one running engine, with the same client and the same
//! keep-alive connections throughout, so the ratios compare like with like.
//!
//! 1. warm-up on `/healthz` (not reported);
//! 2. `healthz`: the HTTP ceiling of this box;
//! 3. `event_page`: `GET /api/events/{id}` of the selling event;
//! 4. `purchase_selling`: every request a fresh shopper buying 1 unit of an
//!    event with more stock than the phase can sell; only 202s count;
//! 5. `purchase_sold_out`, right after: fresh shoppers against a sold-out
//!    event, answered 409 `sold_out` from the engine's local flag (only those
//!    count), while the writers still drain the selling phase (timed);
//! 6. `healthz_after`: the ceiling measured again once the writers are
//!    done; the ratios use the faster of the two `/healthz` phases;
//! 7. ratios to the ceiling, p99s, the SPEC targets, and the orders the
//!    writers persisted; a target not met is named and exits with 3.
//!
//! Shopper tokens are signed before the purchase phases (in parallel, timed),
//! so the client spends its CPU on HTTP, not on HMAC.
//!
//! With `--ablation-layer`, only steps 1, 2 and 4 run (see [`ablation`]).
//!
//! Layout: `ablation` (one row of the cost table), `client` (the
//! connections), `cpu` (CPU use from /proc), `phase` (one measured phase),
//! `setup` (tokens, wallets, events), `report` (bench.json and the printed
//! table); this file runs the phases in order.

mod ablation;
pub(crate) mod client;
mod cpu;
mod phase;
mod report;
mod setup;

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use bytes::Bytes;
use chrono::Utc;
use http::{Method, StatusCode};

use self::{
    client::{Call, Conn, Target},
    phase::{Expect, Phases},
    report::{BenchReport, Head, Persisted},
    setup::MAX_BENCH_USERS,
};
use crate::{
    api::{AdminEvent, Api},
    cli::{BenchArgs, Exit},
    drain::{wait_for_drain, Drain},
};

/// Runs the benchmark: [`Exit::CheckFailed`] when it found something wrong
/// other than load from other processes, else [`Exit::TargetMissed`] when a
/// SPEC §7 target was not met.
pub async fn run(args: BenchArgs) -> anyhow::Result<Exit> {
    check(&args)?;
    let base_url = args.engine.base_url.trim_end_matches('/').to_owned();
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let target = Target::new(&base_url, timeout)?;
    let api = Api::new(&base_url, &args.engine.admin_token, 8, timeout)?;
    api.ready().await?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;

    let head = Head {
        started_at: Utc::now(),
        base_url,
        client: args.client,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        connections: args.connections,
        phase_secs: args.phase_secs,
    };
    println!(
        "bench: {}, {} connections ({:?} client), {}s per phase, {} CPUs shared with the engine",
        head.base_url, head.connections, head.client, head.phase_secs, head.cpus
    );
    let conns = Conn::open(args.client, &target, args.connections).await?;
    let mut phases = Phases::new(
        conns,
        args.phase_secs,
        args.engine_pid,
        args.watch_pids.clone(),
    );
    let healthz = Call {
        method: Method::GET,
        path: "/healthz".into(),
        body: None,
        keyed: None,
    };

    // 1. Warm-up (connections, caches, CPU frequency), not reported.
    phases.warm_up(&healthz, args.warmup_secs).await?;

    // 2. The HTTP ceiling.
    let ok = Expect::Status(StatusCode::OK);
    let health = phases.measure("healthz", &healthz, None, ok).await?;

    // 3. Set-up for the purchase phases: tokens, wallets, events.
    let prepared = setup::prepare(&api, &args, head.started_at, health.rps).await?;
    let (selling, sold_out) = (&prepared.selling, &prepared.sold_out);
    let tokens = Arc::new(prepared.tokens);
    let mut warnings = prepared.warnings;

    // 4. The event page every shopper refreshes (the selling event's).
    let page_call = Call {
        method: Method::GET,
        path: format!("/api/events/{}", selling.id),
        body: None,
        keyed: None,
    };
    let page = if args.ablation_layer.is_none() {
        Some(phases.measure("event_page", &page_call, None, ok).await?)
    } else {
        None
    };

    // 5. Purchases while stock lasts: fresh shoppers, 1 unit each.
    let keyed = args
        .ablation_layer
        .as_ref()
        .map(|_| format!("ablation-{}-", head.started_at.timestamp_millis()));
    let call = purchase_call(selling.id, keyed);
    let accepted = Expect::Status(StatusCode::ACCEPTED);
    let sell = phases
        .measure("purchase_selling", &call, Some(&tokens), accepted)
        .await?;
    let page = match (page, &args.ablation_layer) {
        (_, Some(layer)) => return ablation::finish(&args.out_dir, layer, head, health, sell),
        (Some(page), None) => page,
        (None, None) => unreachable!("the event page is measured unless ablating"),
    };
    warnings.extend(tokens.overrun_warning());

    // 6. Purchases after sell-out, right away, while the writers still
    //    drain the selling phase's backlog (the crowd keeps clicking): fresh
    //    shoppers for event B (the same tokens from the start of the range:
    //    none of them has touched B). The drain is timed meanwhile.
    let backlog = api.event(selling.id).await?.pending;
    println!("bench: {backlog} orders of the selling phase pending as the sold-out phase starts");
    tokens.rewind();
    let call = purchase_call(sold_out.id, None);
    let drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    let (gone, drain) = tokio::join!(
        phases.measure("purchase_sold_out", &call, Some(&tokens), Expect::SoldOut),
        drain_selling(&api, selling.id, drain_timeout)
    );
    let (gone, drain) = (gone?, drain?);
    // 6b. The outbox relay held back during both purchase phases (it yields
    //     to a crowd): its catch-up is measured on its own, so the cost
    //     table still shows what publishing an order event costs.
    let relay = relay_catch_up(&api, &phases, drain_timeout).await?;

    // 7. The ceiling again, once the writers and the relay are done: the
    //    ratios use the faster of the two `/healthz` phases (see
    //    `BenchReport::new`).
    let health_after = phases.measure("healthz_after", &healthz, None, ok).await?;
    if !drain.drained {
        warnings.push(format!(
            "the selling event still had {} pending orders after {}s",
            drain.event.pending,
            drain_timeout.as_secs()
        ));
    }
    drop(phases);

    let mut persisted = persisted(&api, &drain, selling, sold_out, drain_timeout).await?;
    persisted.backlog_at_sold_out_start = backlog;
    warnings.extend(report::persisted_warnings(&sell, &persisted));
    // Warnings about load from other processes do not fail the run.
    let disturbed = report::disturbance_warnings(&[&health, &page, &sell, &gone, &health_after]);
    let n_disturbed = disturbed.len();
    warnings.extend(disturbed);
    warnings.extend(report::uncounted_warnings(&[
        &health,
        &page,
        &sell,
        &gone,
        &health_after,
    ]));

    let setup = report::Setup {
        users: prepared.users,
        sign_secs: prepared.sign_secs,
        sign_us_per_token: prepared.sign_us_per_token,
        signed_inline: tokens.signed_inline(),
        seed_secs: prepared.seed_secs,
        selling_event_id: selling.id,
        sold_out_event_id: sold_out.id,
    };
    let report = BenchReport::new(
        head,
        [health, page, sell, gone, health_after],
        setup,
        persisted,
        relay,
        warnings,
    );
    let path = args.out_dir.join("bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    print!("{}", report::render(&report));
    println!("bench: wrote {}", path.display());
    let missed = report::missed_targets(&report);
    if !missed.is_empty() {
        println!("bench: SPEC §7 targets NOT MET: {}", missed.join(", "));
    }
    Ok(if report.warnings.len() > n_disturbed {
        Exit::CheckFailed
    } else if !missed.is_empty() {
        Exit::TargetMissed
    } else {
        Exit::Pass
    })
}

/// Refuses flags the benchmark cannot run with.
fn check(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=4096).contains(&args.connections),
        "--connections must be in 1..=4096"
    );
    ensure!(args.phase_secs >= 1, "--phase-secs must be at least 1");
    args.engine.check_secrets()?;
    if let Some(users) = args.users {
        ensure!(
            (1..=MAX_BENCH_USERS).contains(&users),
            "--users must be in 1..={MAX_BENCH_USERS}"
        );
    }
    Ok(())
}

fn purchase_call(event_id: i64, keyed: Option<String>) -> Call {
    Call {
        method: Method::POST,
        path: format!("/api/events/{event_id}/purchase"),
        body: Some(Bytes::from_static(br#"{"quantity":1}"#)),
        keyed,
    }
}

/// Waits until the outbox relay owes nothing and is not yielding (read from
/// the engine's `/metrics`), and measures that catch-up's CPU per event
/// published. `None` when the engine runs no relay (no such gauges).
async fn relay_catch_up(
    api: &Api,
    phases: &Phases,
    timeout: Duration,
) -> anyhow::Result<Option<report::RelayCatchUp>> {
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(f64::max)
    };
    let read = |text: &str| {
        (
            gauge(text, "seckill_outbox_backlog"),
            gauge(text, "seckill_outbox_lag_seconds").unwrap_or(0.0),
            gauge(text, "seckill_outbox_published_total").unwrap_or(0.0),
        )
    };
    let first = api.metrics_text().await?;
    let (Some(owed_at_start), lag_at_start, published_before) = read(&first) else {
        return Ok(None);
    };
    if gauge(&first, "seckill_outbox_yielding").is_none() && owed_at_start == 0.0 {
        return Ok(None);
    }
    let cpu0 = phases.cpu_sample();
    let started = std::time::Instant::now();
    let mut published = published_before;
    let mut caught_up = false;
    while started.elapsed() < timeout {
        let text = api.metrics_text().await?;
        let (owed, _, now_published) = read(&text);
        published = now_published;
        // The backlog gauge is refreshed every second: owed nothing twice in
        // a row, 200 ms apart, with no publishing in between.
        if owed == Some(0.0) && gauge(&text, "seckill_outbox_yielding") != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let again = api.metrics_text().await?;
            let (owed, _, later) = read(&again);
            if owed == Some(0.0) && later == published {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let events = (published - published_before).max(0.0) as u64;
    let cpu = phases.cpu_between(&cpu0, &phases.cpu_sample(), events);
    println!(
        "bench: outbox relay caught up={caught_up}: {events} order events published in {secs:.2}s \
         (owed {owed_at_start} with the oldest {lag_at_start:.1}s old when the purchase phases ended)"
    );
    Ok(Some(report::RelayCatchUp {
        caught_up,
        owed_at_start: owed_at_start as u64,
        lag_at_start_secs: lag_at_start,
        events,
        secs,
        cpu,
    }))
}

/// Waits for the writers to persist the selling phase's orders.
async fn drain_selling(api: &Api, event_id: i64, timeout: Duration) -> anyhow::Result<Drain> {
    let drain = wait_for_drain(api, event_id, timeout).await?;
    println!(
        "bench: selling phase drained={} {:.2}s after it ended: {} sold, {} failed, {} pending",
        drain.drained, drain.secs, drain.event.sold, drain.event.failed, drain.event.pending
    );
    Ok(drain)
}

/// Both events' persisted figures once their writers drained.
async fn persisted(
    api: &Api,
    drain: &Drain,
    selling: &AdminEvent,
    sold_out: &AdminEvent,
    timeout: Duration,
) -> anyhow::Result<Persisted> {
    let final_sell = wait_for_drain(api, selling.id, timeout).await?;
    let final_b = wait_for_drain(api, sold_out.id, timeout).await?;
    Ok(Persisted {
        backlog_at_sold_out_start: 0,
        selling_drained: drain.drained,
        selling_drain_secs: drain.secs,
        selling_sold: final_sell.event.sold,
        selling_failed: final_sell.event.failed,
        selling_stock_left: final_sell.event.stock_left,
        sold_out_event_sold: final_b.event.sold,
        orders: final_sell.event.sold + final_b.event.sold,
    })
}
