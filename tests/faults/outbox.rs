//! Order events under faults: the outbox relay is killed (`kill -9` of the
//! engine) and NATS is restarted while a sale's events are flowing; a
//! JetStream consumer then sees every persisted order state exactly once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use seckill::outbox::reader::read_events;
use uuid::Uuid;

use crate::{
    harness::{Persistence, Rig},
    load::{Load, LoadPlan},
    nats::NatsServer,
    scenario::Scenario,
    verdict::{Allow, Verdict},
};

const STREAM: &str = "SECKILL_ORDERS";
const SUBJECTS: &str = "seckill.orders";

/// (published, unpublished) outbox rows of the event.
async fn outbox_rows(rig: &Rig, event_id: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) FILTER (WHERE published_at IS NULL)
         FROM outbox_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&rig.db.pool)
    .await
    .expect("count outbox rows")
}

/// Waits until `done(published, unpublished)`; panics after `within`.
async fn wait_outbox(
    rig: &Rig,
    event_id: i64,
    within: Duration,
    what: &str,
    done: impl Fn(i64, i64) -> bool,
) -> (i64, i64) {
    let deadline = Instant::now() + within;
    loop {
        let (published, unpublished) = outbox_rows(rig, event_id).await;
        if done(published, unpublished) {
            return (published, unpublished);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?} ({published} published, {unpublished} not)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 9. The relay killed and NATS restarted mid-stream: every order event
/// exactly once, in order per order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_relay_killed_and_nats_restarted_mid_stream() {
    let name = "outbox_relay_killed_and_nats_restarted_mid_stream";
    let mut rig = Rig::new(name, Persistence::None).await;
    let mut nats = NatsServer::start(rig.dir.join("nats")).await;
    let nats_url = nats.url();
    rig.start_engine(&[
        ("SECKILL_RECONCILE_INTERVAL_MS", "300"),
        ("SECKILL_NATS_URL", nats_url.as_str()),
        // The relay publishes while the crowd buys (it would otherwise yield
        // to it): this scenario is about its steps failing and recovering.
        ("SECKILL_OUTBOX_YIELD_RPS", "0"),
    ])
    .await;
    let api = rig.api(0);
    // Long enough (at most 320 purchases/s) that events are still coming
    // when NATS dies, after the relay has caught up from the engine kill.
    let sale = api.open_sale(6_000, 12_000).await;
    let mut plan = LoadPlan::new(vec![rig.engines[0].url()]);
    plan.pace = Duration::from_millis(100);
    let load = Load::start(plan, &sale);
    let mut s = Scenario {
        verdict: Verdict::new(name),
        rig,
        api: api.clone(),
        sale,
        load,
    };
    let event_id = s.sale.event_id;

    // The relay is publishing: kill it (the whole engine) mid-stream.
    wait_outbox(
        &s.rig,
        event_id,
        Duration::from_secs(20),
        "first events published",
        |p, _| p >= 100,
    )
    .await;
    s.rig.engines[0].kill9();
    let at_kill = outbox_rows(&s.rig, event_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.rig.engines[0].restart().await;

    // The new relay takes over (after the dead one's lock expires), then
    // NATS dies and comes back on the same store while events keep coming.
    wait_outbox(
        &s.rig,
        event_id,
        Duration::from_secs(20),
        "relay resumed",
        |p, _| p >= at_kill.0 + 50,
    )
    .await;
    nats.kill9();
    let nats_down = Instant::now();
    let at_nats_kill = outbox_rows(&s.rig, event_id).await;
    // Down longer than a publish may wait for its ack: the relay's steps fail.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let before_nats_restart = outbox_rows(&s.rig, event_id).await;
    nats.restart().await;
    let nats_down_for = nats_down.elapsed();
    let attempts = s.finish_load().await;

    // The usual verdict first (drain, two reconciler passes: every order
    // that will ever persist has), then the events of those orders.
    let api = s.api.clone();
    s.verdict
        .judge(&s.rig, &api, &s.sale, &attempts, Allow::default())
        .await;
    let (published, unpublished) = wait_outbox(
        &s.rig,
        event_id,
        Duration::from_secs(60),
        "every event published after the faults",
        |_, u| u == 0,
    )
    .await;

    let events = read_events(
        &nats_url,
        STREAM,
        &format!("{SUBJECTS}.{event_id}.>"),
        Duration::from_secs(5),
    )
    .await
    .expect("read the stream");
    let orders: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT order_no, status FROM orders WHERE event_id = $1")
            .bind(event_id)
            .fetch_all(&s.rig.db.pool)
            .await
            .expect("orders");
    let mut per_state: HashMap<(Uuid, String), usize> = HashMap::new();
    for e in &events {
        *per_state
            .entry((e.order_no, e.kind.trim_start_matches("order.").to_owned()))
            .or_default() += 1;
    }
    let twice = per_state.values().filter(|&&n| n > 1).count();
    let missing = orders
        .iter()
        .filter(|(o, status)| !per_state.contains_key(&(*o, status.clone())))
        .count();
    let persisted: std::collections::HashSet<(Uuid, String)> = orders.iter().cloned().collect();
    let foreign = per_state.keys().filter(|k| !persisted.contains(k)).count();
    let failed = orders.iter().filter(|(_, s)| s == "failed").count();
    // Per order: its events' stream positions follow its outbox ids.
    let ids: HashMap<(Uuid, String), i64> = sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT order_no, kind, id FROM outbox_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_all(&s.rig.db.pool)
    .await
    .expect("outbox ids")
    .into_iter()
    .map(|(o, k, id)| ((o, k.trim_start_matches("order.").to_owned()), id))
    .collect();
    let mut last_id: HashMap<Uuid, i64> = HashMap::new();
    let mut out_of_order = 0;
    for e in &events {
        let id = ids
            .get(&(e.order_no, e.kind.trim_start_matches("order.").to_owned()))
            .copied()
            .unwrap_or_default();
        if last_id
            .insert(e.order_no, id)
            .is_some_and(|before| before > id)
        {
            out_of_order += 1;
        }
    }
    let relay_failed = crate::log_contains(&s.rig.engines[0].log, "outbox relay step failed");

    s.verdict.info(
        "fault",
        format!(
            "kill -9 of the engine (relay) at {} published / {} owed; NATS kill -9 at {} published / {} owed, down {:.1} s, {} owed when it came back",
            at_kill.0,
            at_kill.1,
            at_nats_kill.0,
            at_nats_kill.1,
            nats_down_for.as_secs_f64(),
            before_nats_restart.1
        ),
    );
    s.verdict.check(
        "faults hit mid-stream",
        at_kill.0 > 0 && at_nats_kill.0 > at_kill.0 && before_nats_restart.1 > 0 && relay_failed,
        format!(
            "events were owed while NATS was down; the restarted relay logged failed steps: {relay_failed}"
        ),
    );
    s.verdict.check(
        "outbox drained",
        unpublished == 0 && published as usize >= orders.len(),
        format!(
            "{published} rows published, {unpublished} owed, {} orders",
            orders.len()
        ),
    );
    s.verdict.check(
        "every persisted order state in the stream once",
        missing == 0 && twice == 0 && foreign == 0 && events.len() == orders.len(),
        format!(
            "{} orders ({failed} failed), {} messages: {missing} missing, {twice} more than once, {foreign} not persisted",
            orders.len(),
            events.len()
        ),
    );
    s.verdict.check(
        "per-order order",
        out_of_order == 0 && events.windows(2).all(|w| w[0].sequence < w[1].sequence),
        format!("{out_of_order} events before an earlier state of their order"),
    );
    s.verdict.info(
        "kinds",
        format!("{failed} order.failed of {}", orders.len()),
    );
    s.verdict.conclude();
    s.rig.finish().await;
    drop(nats);
}
