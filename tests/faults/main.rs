//! The fault-injection suite (issue 3): each scenario runs a sale under
//! concurrent load against real processes it starts itself (`redis-server`,
//! a fresh Postgres database, `seckill serve`), injects one fault, heals it,
//! runs the reconciler twice and prints a verdict: SPEC §5 invariants plus
//! what every client was told (every 202 persisted, no order for a rejected
//! request, an unknown outcome at most once).
//!
//! Scenarios 1, 4 and 8 run in `cargo test`; the others (including 3b, a
//! variant of 3 with lagging writers) are `#[ignore]`d and run by `make faults`
//! (`cargo test --test faults -- --include-ignored --test-threads=1 --nocapture`).

mod exactness;
mod harness;
mod load;
mod verdict;

use std::time::{Duration, Instant};

use harness::{Persistence, Rig};
use load::{Load, LoadPlan, Outcome};
use verdict::{discrepancy_count, Allow, Verdict};

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
    let n: i64 = client
        .hlen(format!("{}:{{{event_id}}}:ledger", rig.prefix))
        .await
        .unwrap_or(-1);
    let _ = client.quit().await;
    n
}

pub(crate) fn log_contains(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

/// 1. `kill -9` of the engine mid-sale, restart: no acknowledged purchase lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_engine_mid_sale() {
    let mut rig = Rig::new("kill9_engine_mid_sale", Persistence::None).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
        .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let load = Load::start(LoadPlan::new(vec![rig.engines[0].url()]), &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    rig.engines[0].kill9();
    let at_kill = load.accepted();
    let left_behind = ledger_len(&rig, sale.event_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = Instant::now();
    rig.engines[0].restart().await;
    let restart = down.elapsed();
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("kill9_engine_mid_sale");
    v.info(
        "fault",
        format!(
            "SIGKILL engine after {at_kill} 202s; {left_behind} intents pending in the ledger; restarted in {:.1} s",
            restart.as_secs_f64()
        ),
    );
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    v.conclude();
    rig.finish().await;
}

/// 2. `kill -9` of Redis with AOF `always`, restart on the same port and dir:
/// state identical, scripts reloaded, the sale continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn kill9_redis_aof_always() {
    let mut rig = Rig::new("kill9_redis_aof_always", Persistence::AofAlways).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
        .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let load = Load::start(LoadPlan::new(vec![rig.engines[0].url()]), &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    rig.redis.kill9();
    let at_kill = load.accepted();
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.redis.restart().await;
    let after_restart = load.accepted();
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("kill9_redis_aof_always");
    v.info(
        "fault",
        format!("SIGKILL redis after {at_kill} 202s, down 0.5 s, restarted from its AOF"),
    );
    v.check(
        "sale continued after the restart",
        load_accepted(&attempts) > after_restart,
        format!(
            "{after_restart} 202s before the restart, {} in all",
            load_accepted(&attempts)
        ),
    );
    v.check(
        "scripts reloaded (NOSCRIPT handled)",
        log_contains(&rig.engines[0].log, "script cache flushed; reloading"),
        "engine log shows the reload",
    );
    // State identical: the reconciler found nothing to rebuild or repair.
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    v.conclude();
    rig.finish().await;
}

fn load_accepted(attempts: &[load::Attempt]) -> usize {
    attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Accepted(_)))
        .count()
}

/// 3. Redis restarted empty (no persistence) mid-sale: the reconciler
/// rebuilds the event from Postgres; no oversell; lost 202s are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_restart_without_persistence() {
    redis_restarted_empty(
        "redis_restart_without_persistence",
        &[],
        LoadPlan::default().pace,
    )
    .await;
}

/// 3b. As 3, but the writers lag (one writer, batches of 1) so intents the
/// lost Redis accepted are still queued in the engine's channel when the
/// reconciler rebuilds the event: they hold stock the rebuild must not sell
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_restart_with_writer_backlog() {
    redis_restarted_empty(
        "redis_restart_with_writer_backlog",
        &[("SECKILL_WRITERS", "1"), ("SECKILL_BATCH_MAX", "1")],
        // Fast enough to pile up a writer backlog, slow enough that the crowd
        // is still there when the sale re-opens after the rebuild (the sale
        // pauses, answering not_active, until the writers have drained).
        Duration::from_millis(25),
    )
    .await;
}

async fn redis_restarted_empty(scenario: &'static str, overrides: &[(&str, &str)], pace: Duration) {
    let mut rig = Rig::new(scenario, Persistence::None).await;
    let mut settings = vec![("SECKILL_RECONCILE_INTERVAL_MS", "200")];
    settings.extend_from_slice(overrides);
    rig.start_engine(&settings).await;
    let api = rig.api(0);
    // The sale pauses (not_active) from the restart until the rebuild, which
    // first lets the writers persist their backlog: enough shoppers that the
    // crowd outlasts the pause.
    let sale = api.open_sale(STOCK, USERS * 5).await;
    let mut plan = LoadPlan::new(vec![rig.engines[0].url()]);
    plan.pace = pace;
    let load = Load::start(plan, &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    let backlog = api
        .event(sale.event_id)
        .await
        .map_or(-1, |e| e["channel_depth"].as_i64().unwrap_or(-1));
    rig.redis.kill9();
    let at_kill = load.accepted();
    rig.redis.restart().await;
    let healed = load.elapsed();
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new(scenario);
    v.info(
        "fault",
        format!("SIGKILL redis after {at_kill} 202s (writer backlog {backlog}), restarted empty"),
    );
    let rebuilt = discrepancy_count(&rig, "redis_state_lost").await;
    v.check(
        "reconciler rebuilt the event",
        rebuilt >= 1,
        format!("redis_state_lost repairs: {rebuilt}"),
    );
    v.judge(
        &rig,
        &api,
        &sale,
        &attempts,
        Allow {
            lost_state_before: Some(healed),
            repair_kinds: &["redis_state_lost", "stock_drift", "buyer_drift"],
            ..Allow::default()
        },
    )
    .await;
    v.conclude();
    rig.finish().await;
}

/// 4. Postgres connections killed mid-batch: batches retried, no duplicate
/// rows, money exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_mid_batch() {
    let mut rig = Rig::new("postgres_connections_killed_mid_batch", Persistence::None).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
        .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let load = Load::start(LoadPlan::new(vec![rig.engines[0].url()]), &sale);

    load.wait_accepted(STOCK as usize / 5, REACH_WITHIN).await;
    let mut terminated = 0;
    for _ in 0..6 {
        terminated += rig.db.terminate_engine_backends().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("postgres_connections_killed_mid_batch");
    v.check(
        "engine connections terminated",
        terminated > 0,
        format!("{terminated} backends terminated in 6 rounds"),
    );
    let retries = api.metric("seckill_writer_batch_retries_total").await;
    v.check(
        "writer batches retried",
        retries > 0.0,
        format!("seckill_writer_batch_retries_total {retries}"),
    );
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    v.conclude();
    rig.finish().await;
}

/// 5. Redis stalled 3 s (SIGSTOP/SIGCONT): timeouts or 503, never a wrong
/// answer, no double sale or charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn redis_stalled_sigstop() {
    let mut rig = Rig::new("redis_stalled_sigstop", Persistence::None).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
        .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let load = Load::start(LoadPlan::new(vec![rig.engines[0].url()]), &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    let (at_stop, unknown_before) = (load.accepted(), load.unknown());
    rig.redis.sigstop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.redis.sigcont();
    let (at_cont, unknown_during) = (load.accepted(), load.unknown() - unknown_before);
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("redis_stalled_sigstop");
    v.info(
        "fault",
        format!(
            "SIGSTOP redis for 3 s after {at_stop} 202s ({} more 202s during the stall)",
            at_cont - at_stop
        ),
    );
    v.check(
        "clients felt the stall (timeouts/503)",
        unknown_during > 0,
        format!("{unknown_during} unknown-outcome answers during the stall"),
    );
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    v.conclude();
    rig.finish().await;
}

/// 6. Channel full (capacity 1, one writer, batches of 1): every 202 still
/// persisted, by the reconciler's replay of the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn writers_stalled_channel_full() {
    let mut rig = Rig::new("writers_stalled_channel_full", Persistence::None).await;
    rig.start_engine(&[
        ("SECKILL_CHANNEL_CAPACITY", "1"),
        ("SECKILL_WRITERS", "1"),
        ("SECKILL_BATCH_MAX", "1"),
        ("SECKILL_RECONCILE_INTERVAL_MS", "200"),
    ])
    .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let mut plan = LoadPlan::new(vec![rig.engines[0].url()]);
    plan.pace = Duration::ZERO;
    let load = Load::start(plan, &sale);
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("writers_stalled_channel_full");
    let full = api.metric("seckill_channel_full_total").await;
    v.check(
        "channel overflowed",
        full > 0.0,
        format!("seckill_channel_full_total {full}"),
    );
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    let replayed = discrepancy_count(&rig, "unpersisted_intent").await;
    v.check(
        "overflow persisted by the reconciler",
        replayed > 0,
        format!("{replayed} intents replayed from the ledger"),
    );
    v.conclude();
    rig.finish().await;
}

/// 7. SIGTERM mid-sale: graceful drain, exit 0 within 15 s; the next start
/// finishes whatever is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn sigterm_mid_sale() {
    let mut rig = Rig::new("sigterm_mid_sale", Persistence::None).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
        .await;
    let api = rig.api(0);
    let sale = api.open_sale(STOCK, USERS).await;
    let load = Load::start(LoadPlan::new(vec![rig.engines[0].url()]), &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    let at_term = load.accepted();
    let asked = Instant::now();
    rig.engines[0].sigterm();
    let status = rig.engines[0].wait_exit(Duration::from_secs(20)).await;
    let took = asked.elapsed();
    let left = ledger_len(&rig, sale.event_id).await;
    let drained_log = log_contains(&rig.engines[0].log, "writers drained")
        && log_contains(&rig.engines[0].log, "shutdown complete");
    rig.engines[0].restart().await;
    let attempts = load.join(FINISH_WITHIN).await;

    let mut v = Verdict::new("sigterm_mid_sale");
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
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
        .await;
    v.conclude();
    rig.finish().await;
}

/// 8. The reconciler every 100 ms during a full-speed sale: zero false
/// repairs, zero drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciler_every_100ms_during_sale() {
    let mut rig = Rig::new("reconciler_every_100ms_during_sale", Persistence::None).await;
    rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "100")])
        .await;
    let api = rig.api(0);
    // Enough stock that a full-speed sale outlasts several 100 ms passes even
    // with a release build (500 units sold out in 0.08 s there).
    let sale = api.open_sale(6_000, USERS * 3).await;
    let (before,): (i64,) = sqlx::query_as("SELECT count(*) FROM reconcile_runs")
        .fetch_one(&rig.db.pool)
        .await
        .expect("runs");
    let mut plan = LoadPlan::new(vec![rig.engines[0].url()]);
    plan.pace = Duration::ZERO;
    let load = Load::start(plan, &sale);
    let attempts = load.join(FINISH_WITHIN).await;
    let sale_took = attempts
        .iter()
        .map(|a| a.answered)
        .max()
        .unwrap_or_default();
    let (after,): (i64,) = sqlx::query_as("SELECT count(*) FROM reconcile_runs")
        .fetch_one(&rig.db.pool)
        .await
        .expect("runs");

    let mut v = Verdict::new("reconciler_every_100ms_during_sale");
    v.check(
        "reconciler ran during the sale",
        after - before >= 2,
        format!(
            "{} passes during a {:.2} s sale",
            after - before,
            sale_took.as_secs_f64()
        ),
    );
    v.judge(
        &rig,
        &api,
        &sale,
        &attempts,
        Allow {
            no_discrepancies_at_all: true,
            ..Allow::default()
        },
    )
    .await;
    v.conclude();
    rig.finish().await;
}

/// 9. Two engines on one Redis and Postgres, the reconciler's leader killed
/// mid-sale: the survivor takes the lock and finishes the dead one's intents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: make faults"]
async fn two_engines_one_killed() {
    let mut rig = Rig::new("two_engines_one_killed", Persistence::None).await;
    for _ in 0..2 {
        rig.start_engine(&[("SECKILL_RECONCILE_INTERVAL_MS", "300")])
            .await;
    }
    let sale = rig.api(0).open_sale(STOCK, USERS).await;
    let urls = rig.engines.iter().map(|e| e.url()).collect();
    let load = Load::start(LoadPlan::new(urls), &sale);

    load.wait_accepted(STOCK as usize / 3, REACH_WITHIN).await;
    // Kill the current leader when we can tell which one it is.
    let holder: Option<(String,)> =
        sqlx::query_as("SELECT holder FROM reconcile_runs ORDER BY id DESC LIMIT 1")
            .fetch_optional(&rig.db.pool)
            .await
            .expect("last run");
    let pid_of = |holder: &str| holder.split('-').next().unwrap_or("").to_string();
    let leader = holder.map(|(h,)| pid_of(&h));
    let victim = rig
        .engines
        .iter()
        .position(|e| e.pid().map(|p| p.to_string()) == leader)
        .unwrap_or(1);
    let survivor = 1 - victim;
    let survivor_pid = rig.engines[survivor]
        .pid()
        .expect("survivor running")
        .to_string();
    let (killed_at,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&rig.db.pool)
        .await
        .expect("now");
    rig.engines[victim].kill9();
    let at_kill = load.accepted();

    // The survivor's own loop must take over (lock TTL 3 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let took_over = loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM reconcile_runs WHERE started_at > $1 AND split_part(holder, '-', 1) = $2",
        )
        .bind(killed_at)
        .bind(&survivor_pid)
        .fetch_one(&rig.db.pool)
        .await
        .expect("runs");
        if n > 0 || Instant::now() >= deadline {
            break n > 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attempts = load.join(FINISH_WITHIN).await;

    let api = rig.api(survivor);
    let mut v = Verdict::new("two_engines_one_killed");
    v.info(
        "fault",
        format!(
            "SIGKILL {} (reconciler leader: {}) after {at_kill} 202s",
            rig.engines[victim].name,
            if leader.is_some() { "yes" } else { "unknown" }
        ),
    );
    v.check(
        "survivor's reconciler took the lock",
        took_over,
        format!("a pass by {} after the kill", rig.engines[survivor].name),
    );
    v.judge(&rig, &api, &sale, &attempts, Allow::default())
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
    let (persisted,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM orders WHERE order_no = ANY($1)")
            .bind(&by_victim)
            .fetch_one(&rig.db.pool)
            .await
            .expect("victim's orders");
    v.check(
        "the dead engine's 202s persisted",
        persisted == by_victim.len() as i64 && !by_victim.is_empty(),
        format!("{persisted} of {} persisted", by_victim.len()),
    );
    v.conclude();
    rig.finish().await;
}
