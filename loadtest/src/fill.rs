//! `seckill-loadtest fill`: one sale bought by many distinct shoppers, one
//! unit each, as fast as the engine takes it, through its HTTP purchase path
//! (the set-up of `scripts/bench-bigsale.sh` for sales of millions of
//! buyers, where a scenario run's per-answer bookkeeping would take an hour).
//!
//! The event (stock = buyers, limit 1, price 1) and the wallets (1 each) are
//! made through the admin API; every keep-alive connection then takes the
//! next shopper, signs its token and buys, until every shopper bought once.
//! Each answer must be a 202; the writers are waited for, and the engine's
//! invariant checker must pass (unless `--no-invariants`: the caller runs
//! it). One JSON line on stdout says what was done.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use chrono::Utc;
use http::{Method, StatusCode};

use crate::{
    api::{Api, NewEvent, Signer},
    bench::client::{Call, Conn, Target},
    cli::{ClientKind, Exit, FillArgs},
    drain::wait_for_drain,
    plan,
};

/// Wallets funded per admin call.
const SEED_CHUNK: u64 = 100_000;

pub async fn run(args: FillArgs) -> anyhow::Result<Exit> {
    ensure!(args.buyers >= 1, "--buyers must be at least 1");
    ensure!(
        (1..=4096).contains(&args.connections),
        "--connections must be in 1..=4096"
    );
    args.engine.check_secrets()?;
    let base_url = args.engine.base_url.trim_end_matches('/').to_owned();
    let timeout = Duration::from_secs(30);
    let api = Api::new(&base_url, &args.engine.admin_token, 8, timeout)?;
    api.ready().await?;
    let started_at = Utc::now();
    let first = plan::first_user_id(args.first_user_id, started_at);
    ensure!(
        first >= 1 && first.checked_add(args.buyers as i64).is_some(),
        "--first-user-id out of range"
    );

    let seeded = Instant::now();
    let created = api.seed_wallets(first, args.buyers, 1, SEED_CHUNK).await?;
    ensure!(
        created == args.buyers,
        "only {created} of {} wallets were new",
        args.buyers
    );
    eprintln!(
        "fill: funded {} wallets in {:.1}s",
        args.buyers,
        seeded.elapsed().as_secs_f64()
    );
    let event = api
        .create_preheated_event(&NewEvent {
            name: &format!("fill {}", started_at.format("%Y-%m-%dT%H:%M:%SZ")),
            price: 1,
            stock: args.buyers as i64,
            per_user_limit: 1,
            starts_at: started_at - chrono::Duration::seconds(60),
            ends_at: started_at + chrono::Duration::hours(6),
            cancel_window_seconds: None,
            stock_buckets: None,
        })
        .await?;

    // Tokens are signed on the fly (none cached: millions would not fit).
    let signer = Arc::new(Signer::new(&args.engine.jwt_secret, first, 0));
    let target = Target::new(&base_url, timeout)?;
    let conns = Conn::open(ClientKind::Hyper, &target, args.connections).await?;
    let call = Arc::new(Call {
        method: Method::POST,
        path: format!("/api/events/{}/purchase", event.id),
        body: Some(Bytes::from_static(br#"{"quantity":1}"#)),
        keyed: None,
    });
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(AtomicU64::new(0));
    let buying = Instant::now();
    let reporter = {
        let (progress, buyers) = (progress.clone(), args.buyers);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let done = progress.load(Ordering::Relaxed);
                eprintln!(
                    "fill: {done} of {buyers} bought ({:.0}/s)",
                    done as f64 / buying.elapsed().as_secs_f64()
                );
            }
        })
    };
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (signer, call, next, progress) =
                (signer.clone(), call.clone(), next.clone(), progress.clone());
            let buyers = args.buyers;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= buyers {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let user = first + i as i64;
                    let bearer = signer.bearer(user);
                    // A transport error is retried on a new connection: the
                    // same shopper again is at most a replay of one unit.
                    let mut tries = 0;
                    loop {
                        match conn.send(&call, Some(&bearer)).await {
                            Ok((StatusCode::ACCEPTED, _)) => break,
                            // A retry after a lost answer: the first try bought.
                            Ok((StatusCode::CONFLICT, body))
                                if tries > 0
                                    && memchr::memmem::find(&body, b"limit_exceeded").is_some() =>
                            {
                                break
                            }
                            Ok((status, body)) => bail!(
                                "shopper {user}: HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ),
                            Err(failure) if tries < 5 => {
                                tries += 1;
                                eprintln!("fill: shopper {user}: {failure:?}; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(failure) => bail!("shopper {user}: {failure:?}"),
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("a fill worker panicked")??;
    }
    reporter.abort();
    let secs = buying.elapsed().as_secs_f64();
    let accepted = progress.load(Ordering::Relaxed);

    let drain =
        wait_for_drain(&api, event.id, Duration::from_secs(args.drain_timeout_secs)).await?;
    ensure!(
        drain.drained,
        "the writers did not drain within {}s ({} pending)",
        args.drain_timeout_secs,
        drain.event.pending
    );
    ensure!(
        drain.event.sold == args.buyers as i64 && drain.event.stock_left == 0,
        "sold {} of {} (stock left {})",
        drain.event.sold,
        args.buyers,
        drain.event.stock_left
    );
    if !args.no_invariants {
        let checked = Instant::now();
        match api
            .invariants_within(event.id, Duration::from_secs(1_800))
            .await?
        {
            Some(report) if !report.ok => bail!(
                "invariants failed after the fill: {}",
                serde_json::to_string(&report.checks)?
            ),
            Some(_) => {}
            None => bail!("the engine has no invariant checker"),
        }
        eprintln!(
            "fill: invariants PASS ({:.1}s to check)",
            checked.elapsed().as_secs_f64()
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "event_id": event.id,
            "buyers": args.buyers,
            "accepted": accepted,
            "secs": secs,
            "rps": accepted as f64 / secs,
            "drain_secs": drain.secs,
        })
    );
    Ok(Exit::Pass)
}
