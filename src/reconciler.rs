//! The reconciler: makes Redis and Postgres agree, and finishes what a crash
//! or a full channel left behind.
//!
//! It runs in every engine process, but a pass only runs while holding the
//! Redis leader lock (random token, renewed at a third of its TTL, released
//! by compare-and-delete; losing it stops the pass). For every live event:
//!
//! 1. Redis lost the event (restart without persistence) → rebuild it from
//!    Postgres plus whatever intents survive (`preheat.lua` rebuild mode).
//! 2. Pending intents older than the grace period: already in Postgres → ack
//!    (or release, if failed); not in Postgres → persist through the writer
//!    path (roll forward: the shopper was told 202).
//! 3. Stock and buyer counts that disagree with Postgres truth plus pending
//!    intents → observed twice, then corrected by `repair.lua`, which writes
//!    only if the state is still exactly as observed.
//!
//! Every finding is written to `reconcile_discrepancies`, every pass to
//! `reconcile_runs`, and counted in `/metrics`.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::{self, events::Event, DbError},
    error::ApiError,
    redis::{PersistedOrder, Redis, SaleParams, Snapshot},
    state::AppState,
    writer::{self, persist, Intent},
};

/// What one pass found and did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub run_id: Option<i64>,
    pub holder: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub events_checked: usize,
    /// Ended events whose Redis state was removed (see `CLOSE_OUT_AFTER`).
    pub events_closed_out: usize,
    pub intents_replayed: usize,
    pub intents_acked: usize,
    pub repairs: usize,
    pub discrepancies: Vec<Discrepancy>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Discrepancy {
    pub event_id: i64,
    pub kind: &'static str,
    pub subject: Option<String>,
    pub before: String,
    pub after: String,
    pub repaired: bool,
}

/// Runs a pass every `reconcile_interval` until shutdown.
pub async fn run_loop(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.settings.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match run_guarded(&app).await {
            Ok(Some(report)) if !report.discrepancies.is_empty() => {
                tracing::warn!(
                    discrepancies = report.discrepancies.len(),
                    replayed = report.intents_replayed,
                    repairs = report.repairs,
                    "reconciler repaired drift"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
    }
    let _ = app.reconcile_lock.release().await;
}

/// Runs one pass now (admin route); 409 when another process holds the lock.
pub async fn run_now(app: &AppState) -> Result<Report, ApiError> {
    for _ in 0..20 {
        if let Some(report) = run_guarded(app).await? {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ApiError::conflict(
        "reconciler_busy",
        "another engine process holds the reconciler lock",
    ))
}

/// One pass under the leader lock; `None` when another process leads.
async fn run_guarded(app: &AppState) -> Result<Option<Report>, ApiError> {
    let _serial = app.reconcile_gate.lock().await;
    if !app.reconcile_lock.hold().await? {
        return Ok(None);
    }
    let lost = CancellationToken::new();
    let renewer = {
        let (app, lost) = (app.clone(), lost.clone());
        tokio::spawn(async move {
            let every = app.reconcile_lock.ttl() / 3;
            loop {
                tokio::time::sleep(every).await;
                if !matches!(app.reconcile_lock.hold().await, Ok(true)) {
                    lost.cancel();
                    return;
                }
            }
        })
    };
    let report = pass(app, &lost).await;
    renewer.abort();
    Ok(Some(report?))
}

/// Events worth a look: loaded in Redis, or preheated in Postgres and not
/// long over (a Redis that lost everything lost its live set too).
async fn events_to_check(app: &AppState) -> Result<Vec<Event>, ApiError> {
    let mut ids: HashSet<i64> = app.redis.live_events().await?.into_iter().collect();
    let recent: Vec<(i64,)> = sqlx::query_as("SELECT id FROM events WHERE preheated_at IS NOT NULL AND ends_at > now() - interval '1 day'")
        .fetch_all(&app.db)
        .await
        .map_err(DbError::from)?;
    ids.extend(recent.into_iter().map(|(id,)| id));
    let mut events = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(event) = db::events::get(&app.db, id).await? {
            events.push(event);
        }
    }
    events.sort_by_key(|e| e.id);
    Ok(events)
}

async fn pass(app: &AppState, lost: &CancellationToken) -> Result<Report, ApiError> {
    let started_at = Utc::now();
    let mut report = Report {
        holder: app.instance.clone(),
        started_at: Some(started_at),
        ..Default::default()
    };
    for event in events_to_check(app).await? {
        if lost.is_cancelled() {
            tracing::warn!("reconciler lost its lock mid-pass; stopping");
            break;
        }
        report.events_checked += 1;
        reconcile_event(app, &event, &mut report).await?;
    }
    report.finished_at = Some(Utc::now());
    report.run_id = Some(record(&app.db, &report).await?);
    for d in &report.discrepancies {
        metrics::counter!("seckill_reconcile_discrepancies_total", "kind" => d.kind).increment(1);
    }
    metrics::counter!("seckill_reconcile_replayed_total").increment(report.intents_replayed as u64);
    Ok(report)
}

pub fn sale_params(event: &Event) -> SaleParams {
    SaleParams {
        price: event.price,
        per_user_limit: event.per_user_limit,
        starts_ms: event.starts_at.timestamp_millis(),
        ends_ms: event.ends_at.timestamp_millis(),
        stock_total: event.stock_total,
    }
}

async fn reconcile_event(
    app: &AppState,
    event: &Event,
    report: &mut Report,
) -> Result<(), ApiError> {
    let snapshot = app.redis.snapshot(event.id).await?;
    if Utc::now() >= event.ends_at + CLOSE_OUT_AFTER && snapshot.ledger.is_empty() {
        // Over, every order persisted, idempotency records expired: Redis
        // need not hold the sale any more.
        app.redis.close_out(event.id).await?;
        report.events_closed_out += 1;
        return Ok(());
    }
    if !snapshot.loaded {
        if event.preheated_at.is_none() || Utc::now() >= event.ends_at {
            return Ok(());
        }
        wait_for_quiet_writers(app, event.id).await?;
        let (stock_left, kept) = rebuild_from_postgres(&app.db, &app.redis, event).await?;
        app.redis.publish_stock_back(event.id).await?;
        report.repairs += 1;
        report.discrepancies.push(Discrepancy {
            event_id: event.id,
            kind: "redis_state_lost",
            subject: None,
            before: "event missing from redis".into(),
            after: format!(
                "rebuilt from postgres: stock_left={stock_left}, surviving intents={kept}"
            ),
            repaired: true,
        });
        return Ok(());
    }

    settle_stale_intents(app, event, &snapshot, report).await?;
    repair_drift(app, event, report).await
}

/// Step 2: intents past the grace period are either persisted already (ack or
/// release them) or were never persisted (replay them).
async fn settle_stale_intents(
    app: &AppState,
    event: &Event,
    snapshot: &Snapshot,
    report: &mut Report,
) -> Result<(), ApiError> {
    let grace_ms = app.settings.reconcile_grace.as_millis() as i64;
    let stale: Vec<Intent> = snapshot
        .ledger
        .iter()
        .filter(|(_, e)| snapshot.at_ms - e.accepted_ms >= grace_ms)
        .map(|(order_no, e)| Intent {
            order_no: *order_no,
            event_id: event.id,
            user_id: e.user_id,
            quantity: e.quantity,
            amount: e.amount,
            accepted_at: Utc
                .timestamp_millis_opt(e.accepted_ms)
                .single()
                .unwrap_or_else(Utc::now),
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let order_nos: Vec<Uuid> = stale.iter().map(|i| i.order_no).collect();
    let rows = db::orders::statuses(&app.db, &order_nos, app.settings.reconcile_grace).await?;
    // Committed a moment ago: its writer is acking it right now; not a leftover.
    let settling: HashSet<Uuid> = rows
        .iter()
        .filter(|(_, _, old)| !old)
        .map(|(o, _, _)| *o)
        .collect();
    let persisted: HashMap<Uuid, Option<String>> =
        rows.into_iter().map(|(o, reason, _)| (o, reason)).collect();
    let (done, missing): (Vec<Intent>, Vec<Intent>) = stale
        .into_iter()
        .filter(|i| !settling.contains(&i.order_no))
        .partition(|i| persisted.contains_key(&i.order_no));

    if !done.is_empty() {
        let settled = persist::BatchResult {
            already: done
                .iter()
                .map(|i| (*i, persisted[&i.order_no].clone()))
                .collect(),
            ..Default::default()
        };
        persist::settle(&app.redis, &settled).await?;
        report.intents_acked += done.len();
        for intent in &done {
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "unacked_intent",
                subject: Some(intent.order_no.to_string()),
                before: "pending in ledger".into(),
                after: match &persisted[&intent.order_no] {
                    None => "settled as confirmed".into(),
                    Some(reason) => format!("settled as failed ({reason})"),
                },
                repaired: true,
            });
        }
    }
    // While this process's own writers are behind, the missing intents are
    // most likely in their queue: replaying them now would only add the same
    // work to a busy Postgres. They are durable in the ledger; give the
    // writers ten grace periods before stepping in.
    let missing: Vec<Intent> = if app.writers.held() > 0 {
        let patient_ms = 10 * app.settings.reconcile_grace.as_millis() as i64;
        missing
            .into_iter()
            .filter(|i| snapshot.at_ms - i.accepted_at.timestamp_millis() >= patient_ms)
            .collect()
    } else {
        missing
    };
    for chunk in missing.chunks(app.settings.writer.batch_max) {
        let persisted = writer::persist_with_retry(&app.db, &app.redis, chunk, usize::MAX).await;
        report.intents_replayed += persisted.len();
        for intent in chunk.iter().filter(|i| persisted.contains_key(&i.order_no)) {
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "unpersisted_intent",
                subject: Some(intent.order_no.to_string()),
                before: "accepted in redis, missing in postgres".into(),
                after: "persisted by replay".into(),
                repaired: true,
            });
        }
    }
    Ok(())
}

/// What Redis should hold, from Postgres truth plus pending intents.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub stock_left: i64,
    pub bought: HashMap<i64, i64>,
}

/// Postgres orders accepted no later than the snapshot, merged with the
/// snapshot's pending intents (a pending intent holds its stock even if
/// Postgres already marked it failed: the release has not run yet).
pub async fn expected_state(
    db: &PgPool,
    event: &Event,
    snapshot: &Snapshot,
) -> Result<Expected, DbError> {
    let cutoff = Utc
        .timestamp_millis_opt(snapshot.at_ms)
        .single()
        .unwrap_or_else(Utc::now);
    let rows: Vec<(Uuid, i64, i32, String)> = sqlx::query_as("SELECT order_no, user_id, quantity, status FROM orders WHERE event_id = $1 AND created_at <= $2")
        .bind(event.id)
        .bind(cutoff)
        .fetch_all(db)
        .await?;
    let pending: HashSet<Uuid> = snapshot.ledger.iter().map(|(o, _)| *o).collect();
    let mut bought: HashMap<i64, i64> = HashMap::new();
    let mut taken = 0i64;
    for (order_no, user_id, quantity, status) in rows {
        if status != "failed" && !pending.contains(&order_no) {
            *bought.entry(user_id).or_default() += quantity as i64;
            taken += quantity as i64;
        }
    }
    for (_, entry) in &snapshot.ledger {
        *bought.entry(entry.user_id).or_default() += entry.quantity as i64;
        taken += entry.quantity as i64;
    }
    Ok(Expected {
        stock_left: event.stock_total - taken,
        bought,
    })
}

/// The differences between Redis and what it should hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Drift {
    /// (in Redis, expected)
    pub stock: Option<(i64, i64)>,
    /// (user, in Redis, expected), by user
    pub buyers: Vec<(i64, i64, i64)>,
}

impl Drift {
    pub fn is_none(&self) -> bool {
        self.stock.is_none() && self.buyers.is_empty()
    }
}

pub fn drift(snapshot: &Snapshot, expected: &Expected) -> Drift {
    let stock = snapshot.stock_left.unwrap_or(-1);
    let stock_drift = (stock != expected.stock_left).then_some((stock, expected.stock_left));
    let mut users: HashSet<i64> = snapshot.bought.keys().copied().collect();
    users.extend(expected.bought.keys().copied());
    let mut buyers: Vec<(i64, i64, i64)> = users
        .into_iter()
        .filter_map(|u| {
            let (have, want) = (
                snapshot.bought.get(&u).copied().unwrap_or(0),
                expected.bought.get(&u).copied().unwrap_or(0),
            );
            (have != want).then_some((u, have, want))
        })
        .collect();
    buyers.sort_unstable();
    Drift {
        stock: stock_drift,
        buyers,
    }
}

/// How long after its end an event's Redis state is kept: as long as its
/// shoppers' idempotency records, and until its ledger is empty.
const CLOSE_OUT_AFTER: chrono::TimeDelta = crate::idempotency::RETENTION;

/// How long to wait before confirming a drift with a second look.
const CONFIRM_AFTER: Duration = Duration::from_millis(150);

/// Step 3: repair drift seen twice in a row, with a compare-then-write script.
async fn repair_drift(app: &AppState, event: &Event, report: &mut Report) -> Result<(), ApiError> {
    let first = app.redis.snapshot(event.id).await?;
    let seen = drift(&first, &expected_state(&app.db, event, &first).await?);
    if seen.is_none() {
        return Ok(());
    }
    tokio::time::sleep(CONFIRM_AFTER).await;
    let second = app.redis.snapshot(event.id).await?;
    let expected = expected_state(&app.db, event, &second).await?;
    let confirmed = drift(&second, &expected);
    if confirmed != seen || !second.loaded {
        // Moving state (a sale in full swing): look again next pass.
        return Ok(());
    }
    let Drift {
        stock: stock_drift,
        buyers,
    } = confirmed;
    // More sold than stocked can only be stopped, not undone here: sell no more.
    let target = expected.stock_left.max(0);
    let repaired = app.redis.repair(event.id, &second, target, &buyers).await?;
    if repaired {
        report.repairs += 1;
        if target > second.stock_left.unwrap_or(0) {
            app.redis.publish_stock_back(event.id).await?;
        }
    }
    if let Some((before, _)) = stock_drift {
        report.discrepancies.push(Discrepancy {
            event_id: event.id,
            kind: if expected.stock_left < 0 {
                "oversold"
            } else {
                "stock_drift"
            },
            subject: None,
            before: before.to_string(),
            after: if expected.stock_left < 0 {
                format!("0 (oversold by {})", -expected.stock_left)
            } else {
                target.to_string()
            },
            repaired,
        });
    }
    for (user, before, after) in buyers {
        report.discrepancies.push(Discrepancy {
            event_id: event.id,
            kind: "buyer_drift",
            subject: Some(user.to_string()),
            before: before.to_string(),
            after: after.to_string(),
            repaired,
        });
    }
    Ok(())
}

/// Rebuilds an event's Redis state from Postgres truth plus the intents
/// Redis still holds. Holds the event row `FOR UPDATE` while it reads the
/// orders and runs the script: writer transactions take `FOR KEY SHARE` on it
/// first, so every batch either commits before the read (and is counted) or
/// is admitted against the rebuilt state after it.
pub async fn rebuild_from_postgres(
    db: &PgPool,
    redis: &Redis,
    event: &Event,
) -> Result<(i64, i64), ApiError> {
    let mut tx = db.begin().await.map_err(DbError::from)?;
    sqlx::query("SELECT id FROM events WHERE id = $1 FOR UPDATE")
        .bind(event.id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
    let rows: Vec<(Uuid, i64, i32, String)> = sqlx::query_as(
        "SELECT order_no, user_id, quantity, status FROM orders WHERE event_id = $1 ORDER BY created_at, order_no",
    )
    .bind(event.id)
    .fetch_all(&mut *tx)
    .await
    .map_err(DbError::from)?;
    let persisted: Vec<PersistedOrder> = rows
        .into_iter()
        .map(|(order_no, user_id, quantity, status)| PersistedOrder {
            order_no,
            user_id,
            quantity,
            failed: status == "failed",
        })
        .collect();
    let result = redis
        .rebuild(event.id, sale_params(event), &persisted)
        .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(result)
}

/// Waits (bounded) until no order of the event has been committed for a
/// moment: writers drain what they hold before the sale re-opens, so fewer
/// intents of the lost Redis have to compete for stock again.
async fn wait_for_quiet_writers(app: &AppState, event_id: i64) -> Result<(), DbError> {
    let db = &app.db;
    // Longer than a writer's longest retry backoff, so a writer waiting to
    // retry is not mistaken for one that has finished.
    const QUIET: Duration = Duration::from_millis(3 * writer::MAX_BACKOFF.as_millis() as u64);
    const AT_MOST: Duration = Duration::from_secs(10);
    let started = tokio::time::Instant::now();
    let count = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(db)
            .await?;
        Ok::<_, DbError>(n)
    };
    let mut last = count().await?;
    while started.elapsed() < AT_MOST {
        tokio::time::sleep(QUIET).await;
        let now = count().await?;
        // Quiet: nothing committed for a while, and this process holds nothing.
        if now == last && app.writers.held() == 0 {
            break;
        }
        last = now;
    }
    Ok(())
}

async fn record(db: &PgPool, report: &Report) -> Result<i64, DbError> {
    let mut tx = db.begin().await?;
    let (run_id,): (i64,) = sqlx::query_as(
        "INSERT INTO reconcile_runs (started_at, finished_at, holder, events_checked, intents_replayed, intents_acked, repairs, discrepancies)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(report.started_at)
    .bind(report.finished_at)
    .bind(&report.holder)
    .bind(report.events_checked as i32)
    .bind(report.intents_replayed as i32)
    .bind(report.intents_acked as i32)
    .bind(report.repairs as i32)
    .bind(report.discrepancies.len() as i32)
    .fetch_one(&mut *tx)
    .await?;
    if !report.discrepancies.is_empty() {
        let d = &report.discrepancies;
        sqlx::query(
            "INSERT INTO reconcile_discrepancies (run_id, event_id, kind, subject, before, after, repaired)
             SELECT $1, * FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[])",
        )
        .bind(run_id)
        .bind(d.iter().map(|x| x.event_id).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.kind.to_string()).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.subject.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.before.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.after.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|x| x.repaired).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(run_id)
}
