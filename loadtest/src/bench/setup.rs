//! Set-up for the purchase phases, before any of them is timed: shopper
//! tokens signed on every core, wallets funded, and two events preheated, a
//! selling one with more stock than a phase can sell and a sold-out one.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::ensure;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderValue;

use crate::{
    api::{AdminEvent, Api, NewEvent, Outcome, PurchaseResult, Signer},
    cli::BenchArgs,
    plan,
};

/// Most shoppers one bench run pre-signs tokens for and funds.
pub const MAX_BENCH_USERS: u64 = 1_000_000;
/// Most wallets one `POST /admin/wallets/seed` may create.
const SEED_MAX_PER_CALL: u64 = 1_000_000;
/// Wallets per seed call here (a smaller call stays well inside its timeout).
const SEED_CHUNK: u64 = 250_000;

/// Shopper tokens for a range of users, handed out in order.
pub struct Tokens {
    signer: Signer,
    first_user_id: i64,
    presigned: u64,
    next: AtomicU64,
    inline: AtomicU64,
}

impl Tokens {
    /// The next shopper's `Authorization` header.
    pub fn next(&self) -> HeaderValue {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.presigned {
            self.inline.fetch_add(1, Ordering::Relaxed);
        }
        // Cached (pre-signed) inside the range, signed on the spot beyond it.
        self.signer.bearer(self.first_user_id + i as i64)
    }

    /// Says when more shoppers were handed out than were pre-signed and
    /// funded: those could not pay, so the phase's figures are off.
    pub fn overrun_warning(&self) -> Option<String> {
        let (used, users) = (self.next.load(Ordering::Relaxed), self.presigned);
        (used > users).then(|| {
            format!(
                "the selling phase used {used} shoppers, {} beyond the {users} pre-signed and funded ones",
                used - users
            )
        })
    }

    /// Tokens signed inside the loop because the pre-signed range ran out.
    pub fn signed_inline(&self) -> u64 {
        self.inline.load(Ordering::Relaxed)
    }

    /// Starts handing out the range again from its first shopper.
    pub fn rewind(&self) {
        self.next.store(0, Ordering::Relaxed);
    }
}

/// What the set-up made, with its timings.
pub struct Prepared {
    pub tokens: Tokens,
    /// Shoppers pre-signed and funded.
    pub users: u64,
    pub sign_secs: f64,
    pub sign_us_per_token: f64,
    pub seed_secs: f64,
    pub selling: AdminEvent,
    pub sold_out: AdminEvent,
    /// Found on the way; they fail the run.
    pub warnings: Vec<String>,
}

/// Signs, funds and creates everything the purchase phases need; `healthz_rps`
/// sizes the shopper range when `--users` does not.
pub async fn prepare(
    api: &Api,
    args: &BenchArgs,
    started_at: DateTime<Utc>,
    healthz_rps: f64,
) -> anyhow::Result<Prepared> {
    let secs = args.phase_secs as f64;
    let users = args.users.unwrap_or_else(|| {
        let want = (healthz_rps * secs * 1.25).ceil() as u64 + 10_000;
        want.clamp(10_000, MAX_BENCH_USERS)
    });
    let first_user_id = plan::first_user_id(args.first_user_id, started_at);
    ensure!(
        first_user_id >= 1 && first_user_id.checked_add(users as i64 + 2).is_some(),
        "--first-user-id out of range"
    );
    let (tokens, sign_secs) = sign(&args.engine.jwt_secret, first_user_id, users).await?;
    let sign_us_per_token = sign_secs * 1e6 / users as f64;
    println!(
        "bench: signed {users} shopper tokens in {sign_secs:.2}s ({sign_us_per_token:.1} µs each, all cores) before the purchase phases"
    );
    // Shoppers first..first+users pay 1 each; two more for selling out event B.
    let (seed_secs, warnings) = fund(api, first_user_id, users + 2).await?;

    let stamp = started_at.format("%Y-%m-%dT%H:%M:%SZ");
    let selling = new_event(
        api,
        &format!("bench selling {stamp}"),
        args.stock,
        args.stock_buckets,
    )
    .await?;
    let sold_out = new_event(api, &format!("bench sold-out {stamp}"), 1, None).await?;
    sell_out(
        api,
        &tokens.signer,
        sold_out.id,
        first_user_id + users as i64,
    )
    .await?;
    println!(
        "bench: event {} (stock {}) for selling, event {} sold out",
        selling.id, args.stock, sold_out.id
    );
    Ok(Prepared {
        tokens,
        users,
        sign_secs,
        sign_us_per_token,
        seed_secs,
        selling,
        sold_out,
        warnings,
    })
}

/// Pre-signs the tokens of shoppers `first_user_id..+users`; returns them
/// and the seconds it took.
async fn sign(secret: &str, first_user_id: i64, users: u64) -> anyhow::Result<(Tokens, f64)> {
    let secret = secret.to_owned();
    let (signer, sign_secs) =
        tokio::task::spawn_blocking(move || presign(&secret, first_user_id, users)).await?;
    let tokens = Tokens {
        signer,
        first_user_id,
        presigned: users,
        next: AtomicU64::new(0),
        inline: AtomicU64::new(0),
    };
    Ok((tokens, sign_secs))
}

/// Funds `wallets` wallets from `first_user_id` with 1 each; returns the
/// seconds it took and a warning when some already existed.
async fn fund(api: &Api, first_user_id: i64, wallets: u64) -> anyhow::Result<(f64, Vec<String>)> {
    let mut warnings = Vec::new();
    let seeded = Instant::now();
    let chunk = SEED_CHUNK.min(SEED_MAX_PER_CALL);
    let created = api.seed_wallets(first_user_id, wallets, 1, chunk).await?;
    let seed_secs = seeded.elapsed().as_secs_f64();
    if created != wallets {
        warnings.push(format!(
            "only {created} of {wallets} wallets were new (earlier run with the same ids?)"
        ));
    }
    println!("bench: funded {wallets} wallets in {seed_secs:.2}s");
    Ok((seed_secs, warnings))
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

/// A preheated event on sale since a minute ago, for two hours, 1 unit each.
async fn new_event(
    api: &Api,
    name: &str,
    stock: i64,
    stock_buckets: Option<u32>,
) -> anyhow::Result<AdminEvent> {
    let now = Utc::now();
    api.create_preheated_event(&NewEvent {
        name,
        price: 1,
        stock,
        per_user_limit: 1,
        starts_at: now - chrono::Duration::seconds(60),
        ends_at: now + chrono::Duration::hours(2),
        cancel_window_seconds: None,
        stock_buckets,
    })
    .await
}

/// Sells the event's only unit to shopper `buyer`, then lets `buyer + 1` meet
/// the sold-out answer from Redis, which raises the engine's local flag.
async fn sell_out(api: &Api, signer: &Signer, event_id: i64, buyer: i64) -> anyhow::Result<()> {
    let url = api.purchase_url(event_id)?;
    let body = Bytes::from_static(br#"{"quantity":1}"#);
    let buy = |user| api.purchase(&url, signer.bearer(user), body.clone(), None);
    let what = "selling the sold-out event's only unit";
    expect_outcome(buy(buyer).await, Outcome::Accepted, what)?;
    let what = "a purchase after the sell-out";
    expect_outcome(buy(buyer + 1).await, Outcome::SoldOut, what)
}

fn expect_outcome(got: PurchaseResult, want: Outcome, what: &str) -> anyhow::Result<()> {
    ensure!(
        got.outcome == want,
        "{what} answered {} ({:?})",
        got.outcome.label(),
        got.unexpected
    );
    Ok(())
}
