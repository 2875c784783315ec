//! The fault-injection suite: each scenario runs a sale under concurrent
//! load against real processes it starts itself (`redis-server`, a fresh
//! Postgres database, `seckill serve`), injects one fault, heals it, runs the
//! reconciler twice and prints a verdict: SPEC §5 invariants plus what every
//! client was told (every 202 persisted, no order for a rejected request, an
//! unknown outcome at most once).
//!
//! Scenarios 1, 4 and 8, two of [`exactness`], two of [`refunds`], two of
//! [`lifecycle`] (L1, L2) and [`outbox`] (the relay killed and NATS restarted
//! mid-stream) run in `cargo test`; the others are `#[ignore]`d and run by
//! `make faults`
//! (`cargo test --test faults -- --include-ignored --test-threads=1 --nocapture`).

mod exactness;
mod harness;
mod lifecycle;
mod load;
mod nats;
mod outbox;
#[path = "../common/ports.rs"]
mod ports;
mod refunds;
mod scenario;
mod verdict;

use std::time::{Duration, Instant};

use harness::{Persistence, Rig};
use load::{Attempt, Outcome};
use scenario::Setup;
use verdict::{discrepancy_count, Allow};

pub(crate) const STOCK: i64 = 400;
/// Funded users: enough that demand is many times the stock.
pub(crate) const USERS: i64 = 4_000;
/// Longest a scenario lets the load run after the fault is healed.
pub(crate) const FINISH_WITHIN: Duration = Duration::from_secs(30);
pub(crate) const REACH_WITHIN: Duration = Duration::from_secs(20);

/// Intents in the event's Redis ledger right now (the test's own read).
pub(crate) async fn ledger_len(rig: &Rig, event_id: i64) -> i64 {
    use fred::prelude::*;
    let client = rig.redis.client().await;
    // Intents only: the ledger's pin (lua/prelude.lua) is not one.
    let n = match client
        .hkeys::<Vec<String>, _>(rig.keys().event(event_id).ledger)
        .await
    {
        Ok(fields) => fields
            .iter()
            .filter(|f| f.parse::<uuid::Uuid>().is_ok())
            .count() as i64,
        Err(_) => -1,
    };
    let _ = client.quit().await;
    n
}

pub(crate) fn log_contains(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

fn accepted(attempts: &[Attempt]) -> usize {
    attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Accepted(_)))
        .count()
}

/// 1. `kill -9` of the engine mid-sale, restart: no acknowledged purchase lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_engine_mid_sale() {
    let mut s = Setup::new("kill9_engine_mid_sale").start().await;
    s.sold(3).await;
    s.rig.engines[0].kill9();
    let at_kill = s.load.accepted();
    let left_behind = ledger_len(&s.rig, s.sale.event_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = Instant::now();
    s.rig.engines[0].restart().await;
    let restart = down.elapsed();
    let attempts = s.finish_load().await;

    s.verdict.info(
        "fault",
        format!(
            "SIGKILL engine after {at_kill} 202s; {left_behind} intents pending in the ledger; restarted in {:.1} s",
            restart.as_secs_f64()
        ),
    );
    let api = s.api.clone();
    s.conclude(&api, &attempts, Allow::default()).await;
}

/// 2. `kill -9` of Redis with AOF `always`, restart on the same port and dir:
/// state identical, scripts reloaded, the sale continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn kill9_redis_aof_always() {
    let mut s = Setup::new("kill9_redis_aof_always")
        .persistence(Persistence::AofAlways)
        .start()
        .await;
    s.sold(3).await;
    s.rig.redis.kill9();
    let at_kill = s.load.accepted();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.rig.redis.restart().await;
    let after_restart = s.load.accepted();
    let attempts = s.finish_load().await;

    let v = &mut s.verdict;
    v.info(
        "fault",
        format!("SIGKILL redis after {at_kill} 202s, down 0.5 s, restarted from its AOF"),
    );
    v.check(
        "sale continued after the restart",
        accepted(&attempts) > after_restart,
        format!(
            "{after_restart} 202s before the restart, {} in all",
            accepted(&attempts)
        ),
    );
    v.check(
        "scripts reloaded (NOSCRIPT handled)",
        log_contains(&s.rig.engines[0].log, "script cache flushed; reloading"),
        "engine log shows the reload",
    );
    // State identical: the reconciler found nothing to rebuild or repair.
    let api = s.api.clone();
    s.conclude(&api, &attempts, Allow::default()).await;
}

/// 3. Redis restarted empty (no persistence) mid-sale: the reconciler
/// rebuilds the event from Postgres; no oversell; lost 202s are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_restart_without_persistence() {
    redis_restarted_empty(Setup::new("redis_restart_without_persistence")).await;
}

/// 3b. As 3, but the writers lag (one writer, batches of 1) so intents the
/// lost Redis accepted are still queued in the engine's channel when the
/// reconciler rebuilds the event: they hold stock the rebuild must not sell
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_restart_with_writer_backlog() {
    redis_restarted_empty(
        Setup::new("redis_restart_with_writer_backlog")
            .settings(&[("SECKILL_WRITERS", "1"), ("SECKILL_BATCH_MAX", "1")])
            // Fast enough to pile up a writer backlog, slow enough that the
            // crowd is still there when the sale re-opens after the rebuild
            // (the sale pauses, answering not_active, until the writers drain).
            .pace(Duration::from_millis(25)),
    )
    .await;
}

async fn redis_restarted_empty(setup: Setup) {
    // The sale pauses (not_active) from the restart until the rebuild, which
    // first lets the writers persist their backlog: enough shoppers that the
    // crowd outlasts the pause.
    let mut s = setup
        .settings(&[("SECKILL_RECONCILE_INTERVAL_MS", "200")])
        .sale(STOCK, USERS * 5)
        .start()
        .await;
    s.sold(3).await;
    let backlog = s
        .api
        .event(s.sale.event_id)
        .await
        .map_or(-1, |e| e["channel_depth"].as_i64().unwrap_or(-1));
    s.rig.redis.kill9();
    let at_kill = s.load.accepted();
    s.rig.redis.restart().await;
    let healed = s.load.elapsed();
    let attempts = s.finish_load().await;

    s.verdict.info(
        "fault",
        format!("SIGKILL redis after {at_kill} 202s (writer backlog {backlog}), restarted empty"),
    );
    let rebuilt = discrepancy_count(&s.rig, "redis_state_lost").await;
    s.verdict.check(
        "reconciler rebuilt the event",
        rebuilt >= 1,
        format!("redis_state_lost repairs: {rebuilt}"),
    );
    let allow = Allow {
        lost_state_before: Some(healed),
        repair_kinds: &["redis_state_lost", "stock_drift", "buyer_drift"],
        ..Allow::default()
    };
    let api = s.api.clone();
    s.conclude(&api, &attempts, allow).await;
}

/// 4. Postgres connections killed mid-batch: batches retried, no duplicate
/// rows, money exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_mid_batch() {
    let mut s = Setup::new("postgres_connections_killed_mid_batch")
        .start()
        .await;
    s.sold(5).await;
    let mut terminated = 0;
    for _ in 0..6 {
        terminated += s.rig.db.terminate_engine_backends().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = s.finish_load().await;

    s.verdict.check(
        "engine connections terminated",
        terminated > 0,
        format!("{terminated} backends terminated in 6 rounds"),
    );
    let retries = s.api.metric("seckill_writer_batch_retries_total").await;
    s.verdict.check(
        "writer batches retried",
        retries > 0.0,
        format!("seckill_writer_batch_retries_total {retries}"),
    );
    let api = s.api.clone();
    s.conclude(&api, &attempts, Allow::default()).await;
}

/// 5. Redis stalled 3 s (SIGSTOP/SIGCONT): timeouts or 503, never a wrong
/// answer, no double sale or charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_stalled_sigstop() {
    let mut s = Setup::new("redis_stalled_sigstop").start().await;
    s.sold(3).await;
    let (at_stop, unknown_before) = (s.load.accepted(), s.load.unknown());
    s.rig.redis.sigstop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.rig.redis.sigcont();
    let (at_cont, unknown_during) = (s.load.accepted(), s.load.unknown() - unknown_before);
    let attempts = s.finish_load().await;

    s.verdict.info(
        "fault",
        format!(
            "SIGSTOP redis for 3 s after {at_stop} 202s ({} more 202s during the stall)",
            at_cont - at_stop
        ),
    );
    s.verdict.check(
        "clients felt the stall (timeouts/503)",
        unknown_during > 0,
        format!("{unknown_during} unknown-outcome answers during the stall"),
    );
    let api = s.api.clone();
    s.conclude(&api, &attempts, Allow::default()).await;
}

/// 6. Channel full (capacity 1, one writer, batches of 1): every 202 still
/// persisted, by the reconciler's replay of the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn writers_stalled_channel_full() {
    let mut s = Setup::new("writers_stalled_channel_full")
        .settings(&[
            ("SECKILL_CHANNEL_CAPACITY", "1"),
            ("SECKILL_WRITERS", "1"),
            ("SECKILL_BATCH_MAX", "1"),
            ("SECKILL_RECONCILE_INTERVAL_MS", "200"),
        ])
        .pace(Duration::ZERO)
        .start()
        .await;
    let attempts = s.finish_load().await;

    let full = s.api.metric("seckill_channel_full_total").await;
    s.verdict.check(
        "channel overflowed",
        full > 0.0,
        format!("seckill_channel_full_total {full}"),
    );
    let api = s.api.clone();
    s.verdict
        .judge(&s.rig, &api, &s.sale, &attempts, Allow::default())
        .await;
    let replayed = discrepancy_count(&s.rig, "unpersisted_intent").await;
    s.verdict.check(
        "overflow persisted by the reconciler",
        replayed > 0,
        format!("{replayed} intents replayed from the ledger"),
    );
    s.verdict.conclude();
    s.rig.finish().await;
}

/// 7. SIGTERM mid-sale: graceful drain, exit 0 within 15 s; the next start
/// finishes whatever is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn sigterm_mid_sale() {
    let mut s = Setup::new("sigterm_mid_sale").start().await;
    s.sold(3).await;
    let at_term = s.load.accepted();
    let asked = Instant::now();
    s.rig.engines[0].sigterm();
    let status = s.rig.engines[0].wait_exit(Duration::from_secs(20)).await;
    let took = asked.elapsed();
    let left = ledger_len(&s.rig, s.sale.event_id).await;
    let log = &s.rig.engines[0].log;
    let drained_log =
        log_contains(log, "writers drained") && log_contains(log, "shutdown complete");
    s.rig.engines[0].restart().await;
    let attempts = s.finish_load().await;

    let v = &mut s.verdict;
    v.check(
        "exit 0 within 15 s of SIGTERM",
        status.is_some_and(|s| s.success()) && took <= Duration::from_secs(15),
        format!(
            "SIGTERM after {at_term} 202s; exit {status:?} after {:.1} s",
            took.as_secs_f64()
        ),
    );
    v.check(
        "graceful: writers drained",
        drained_log,
        "log shows `writers drained` and `shutdown complete`",
    );
    v.info(
        "left in the ledger at exit",
        format!("{left} intents (the next start finishes them)"),
    );
    let api = s.api.clone();
    s.conclude(&api, &attempts, Allow::default()).await;
}

/// 8. The reconciler every 100 ms during a full-speed sale: zero false
/// repairs, zero drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciler_every_100ms_during_sale() {
    // Enough stock that a full-speed sale outlasts several 100 ms passes even
    // with a release build (500 units sold out in 0.08 s there).
    let setup = Setup::new("reconciler_every_100ms_during_sale")
        .settings(&[("SECKILL_RECONCILE_INTERVAL_MS", "100")])
        .sale(6_000, USERS * 3)
        .pace(Duration::ZERO);
    let mut s = setup.start().await;
    let before = s.rig.db.reconcile_runs().await;
    let attempts = s.finish_load().await;
    let sale_took = attempts
        .iter()
        .map(|a| a.answered)
        .max()
        .unwrap_or_default();
    let after = s.rig.db.reconcile_runs().await;

    s.verdict.check(
        "reconciler ran during the sale",
        after - before >= 2,
        format!(
            "{} passes during a {:.2} s sale",
            after - before,
            sale_took.as_secs_f64()
        ),
    );
    let allow = Allow {
        no_discrepancies_at_all: true,
        ..Allow::default()
    };
    let api = s.api.clone();
    s.conclude(&api, &attempts, allow).await;
}

/// 9. Two engines on one Redis and Postgres, the reconciler's leader killed
/// mid-sale: the survivor takes the lock and finishes the dead one's intents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn two_engines_one_killed() {
    let mut s = Setup::new("two_engines_one_killed")
        .engines(2)
        .start()
        .await;
    s.sold(3).await;
    // Kill the current leader when we can tell which one it is.
    let leader = s.rig.db.last_reconciler_pid().await;
    let victim = s
        .rig
        .engines
        .iter()
        .position(|e| e.pid().map(|p| p.to_string()) == leader)
        .unwrap_or(1);
    let survivor = 1 - victim;
    let survivor_pid = s.rig.engines[survivor]
        .pid()
        .expect("survivor running")
        .to_string();
    let killed_at = s.rig.db.now().await;
    s.rig.engines[victim].kill9();
    let at_kill = s.load.accepted();

    // The survivor's own loop must take over (lock TTL 3 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let took_over = loop {
        let passes = s.rig.db.passes_by(&survivor_pid, killed_at).await;
        if passes > 0 || Instant::now() >= deadline {
            break passes > 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attempts = s.finish_load().await;

    let api = s.rig.api(survivor);
    s.verdict.info(
        "fault",
        format!(
            "SIGKILL {} (reconciler leader: {}) after {at_kill} 202s",
            s.rig.engines[victim].name,
            if leader.is_some() { "yes" } else { "unknown" }
        ),
    );
    s.verdict.check(
        "survivor's reconciler took the lock",
        took_over,
        format!("a pass by {} after the kill", s.rig.engines[survivor].name),
    );
    s.verdict
        .judge(&s.rig, &api, &s.sale, &attempts, Allow::default())
        .await;
    // After the drain: every 202 the dead engine gave is a row.
    let by_victim: Vec<uuid::Uuid> = attempts
        .iter()
        .filter(|a| a.engine == victim)
        .filter_map(|a| match a.outcome {
            Outcome::Accepted(o) => Some(o),
            _ => None,
        })
        .collect();
    let persisted = s.rig.db.orders_among(&by_victim).await;
    s.verdict.check(
        "the dead engine's 202s persisted",
        persisted == by_victim.len() as i64 && !by_victim.is_empty(),
        format!("{persisted} of {} persisted", by_victim.len()),
    );
    s.verdict.conclude();
    s.rig.finish().await;
}
