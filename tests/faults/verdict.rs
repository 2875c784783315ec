//! The end-of-scenario verdict: drain, reconcile twice, then hold the engine
//! to the invariants (its own checker and ours) and to what every client was
//! told. Every line is printed with its figures, PASS or FAIL.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use fred::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    harness::{Api, Rig, Sale},
    load::{Attempt, Outcome},
};

/// What the scenario allows beyond a healthy sale.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// Redis lost its state mid-sale (restart without persistence), back
    /// up at this point of the load: a 202 for a request sent before it may
    /// be lost (counted and printed, not hidden); `not_active` answers may
    /// happen while the event is rebuilt, and stock may come back. A 202 for
    /// a request sent later must be persisted like any other.
    pub lost_state_before: Option<Duration>,
    /// Discrepancy kinds the reconciler may have recorded besides
    /// `unacked_intent` / `unpersisted_intent` (which every crash leaves).
    pub repair_kinds: &'static [&'static str],
    /// A healthy sale: not even intents left for the reconciler.
    pub no_discrepancies_at_all: bool,
}

struct Line {
    ok: Option<bool>,
    name: String,
    detail: String,
}

pub struct Verdict {
    scenario: &'static str,
    lines: Vec<Line>,
}

impl Verdict {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            lines: Vec::new(),
        }
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.lines.push(Line {
            ok: Some(ok),
            name: name.into(),
            detail: detail.into(),
        });
    }

    pub fn info(&mut self, name: &str, detail: impl Into<String>) {
        self.lines.push(Line {
            ok: None,
            name: name.into(),
            detail: detail.into(),
        });
    }

    /// Prints every line; panics when any check failed.
    pub fn conclude(self) {
        let failed: Vec<&Line> = self.lines.iter().filter(|l| l.ok == Some(false)).collect();
        println!(
            "\n--- verdict: {} — {} ---",
            self.scenario,
            if failed.is_empty() { "PASS" } else { "FAIL" }
        );
        for l in &self.lines {
            let tag = match l.ok {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "info",
            };
            println!("  [{tag}] {:<40} {}", l.name, l.detail);
        }
        assert!(
            failed.is_empty(),
            "{}: {} check(s) failed: {}",
            self.scenario,
            failed.len(),
            failed
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Heals nothing itself: call it once the fault is over. Drains, runs
    /// the reconciler twice and checks everything.
    pub async fn judge(
        &mut self,
        rig: &Rig,
        api: &Api,
        sale: &Sale,
        attempts: &[Attempt],
        allow: Allow,
    ) {
        self.summarize_load(sale, attempts);
        self.drain(api, sale).await;
        self.reconcile_twice(api).await;
        self.engine_invariants(api, sale).await;
        self.client_truth(rig, sale, attempts, allow).await;
        self.redis_matches_postgres(rig, sale, allow).await;
        self.discrepancies(rig, allow).await;
    }

    fn summarize_load(&mut self, sale: &Sale, attempts: &[Attempt]) {
        let mut by_kind: HashMap<String, usize> = HashMap::new();
        for a in attempts {
            let kind = match &a.outcome {
                Outcome::Accepted(_) => "202".to_string(),
                Outcome::Rejected(s, code) => format!("{s} {code}"),
                Outcome::NotSent => "not sent (connect refused, retried)".into(),
                Outcome::Unknown(why) if why.starts_with("transport") => {
                    "unknown: transport error".into()
                }
                Outcome::Unknown(why) => format!("unknown: {why}"),
            };
            *by_kind.entry(kind).or_default() += 1;
        }
        let mut kinds: Vec<_> = by_kind.into_iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let users: HashSet<i64> = attempts.iter().map(|a| a.user).collect();
        self.info(
            "sale",
            format!(
                "event {}, stock {}, limit {}/user, {} funded users",
                sale.event_id, sale.stock, sale.per_user_limit, sale.users
            ),
        );
        self.info(
            "load",
            format!(
                "{} requests from {} users: {}",
                attempts.len(),
                users.len(),
                kinds
                    .iter()
                    .map(|(k, n)| format!("{k} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }

    /// Waits until nothing is pending (poking the reconciler meanwhile).
    async fn drain(&mut self, api: &Api, sale: &Sale) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let mut last;
        loop {
            match api.event(sale.event_id).await {
                Ok(ev) if ev["pending"] == 0 && ev["preheated"] == true => {
                    self.check(
                        "drained (pending = 0)",
                        true,
                        format!(
                            "after {:.1} s; confirmed {}, failed {}, stock_left {}",
                            started.elapsed().as_secs_f64(),
                            ev["confirmed"],
                            ev["failed"],
                            ev["stock_left"]
                        ),
                    );
                    return;
                }
                Ok(ev) => {
                    last = format!(
                        "pending {}, preheated {}, channel_depth {}",
                        ev["pending"], ev["preheated"], ev["channel_depth"]
                    )
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                self.check(
                    "drained (pending = 0)",
                    false,
                    format!("after 30 s: {last}"),
                );
                return;
            }
            let _ = api.reconcile().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn reconcile_twice(&mut self, api: &Api) {
        let mut reports = Vec::new();
        for _ in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match api.reconcile().await {
                    Ok(r) => {
                        reports.push(r);
                        break;
                    }
                    // Another engine may still hold the lock (it expires).
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        self.check("I8 reconcile runs", false, e);
                        return;
                    }
                }
            }
        }
        let figures = |r: &Value| {
            format!(
                "replayed {}, acked {}, repairs {}, discrepancies {}",
                r["intents_replayed"],
                r["intents_acked"],
                r["repairs"],
                r["discrepancies"].as_array().map_or(0, Vec::len)
            )
        };
        self.info("reconcile pass 1", figures(&reports[0]));
        let second = &reports[1];
        let quiet = second["repairs"] == 0
            && second["discrepancies"]
                .as_array()
                .is_some_and(Vec::is_empty)
            && second["intents_replayed"] == 0;
        self.check(
            "I8 second pass changes nothing",
            quiet,
            format!("pass 2: {}", figures(second)),
        );
    }

    async fn engine_invariants(&mut self, api: &Api, sale: &Sale) {
        match api.invariants(sale.event_id).await {
            Ok(report) => {
                let checks = report["checks"].as_array().cloned().unwrap_or_default();
                for c in &checks {
                    self.check(
                        &format!("engine: {}", c["name"].as_str().unwrap_or("?")),
                        c["ok"] == true,
                        c["detail"].as_str().unwrap_or(""),
                    );
                }
                self.check(
                    "engine invariant report ok",
                    report["ok"] == true && !checks.is_empty(),
                    format!("ok {}, drained {}", report["ok"], report["drained"]),
                );
            }
            Err(e) => self.check("engine invariant report ok", false, e),
        }
    }

    /// I5 and friends, from the clients' answers against Postgres.
    async fn client_truth(&mut self, rig: &Rig, sale: &Sale, attempts: &[Attempt], allow: Allow) {
        let orders: Vec<(Uuid, i64, String, i32)> = sqlx::query_as(
            "SELECT order_no, user_id, status, quantity FROM orders WHERE event_id = $1",
        )
        .bind(sale.event_id)
        .fetch_all(&rig.db.pool)
        .await
        .expect("read orders");
        let in_db: HashMap<Uuid, (i64, &str)> = orders
            .iter()
            .map(|(o, u, s, _)| (*o, (*u, s.as_str())))
            .collect();

        let mut accepted: HashMap<Uuid, i64> = HashMap::new();
        let mut unknown_per_user: HashMap<i64, usize> = HashMap::new();
        let mut first_sold_out: Option<Duration> = None;
        let mut unexpected: HashMap<String, usize> = HashMap::new();
        for a in attempts {
            match &a.outcome {
                Outcome::Accepted(o) => {
                    accepted.insert(*o, a.user);
                }
                Outcome::Unknown(_) => *unknown_per_user.entry(a.user).or_default() += 1,
                Outcome::Rejected(409, code) if code == "sold_out" => {
                    first_sold_out = Some(first_sold_out.map_or(a.answered, |t| t.min(a.answered)));
                }
                Outcome::Rejected(409, code)
                    if code == "not_active" && allow.lost_state_before.is_some() => {}
                Outcome::Rejected(status, code) => {
                    *unexpected.entry(format!("{status} {code}")).or_default() += 1
                }
                Outcome::NotSent => {}
            }
        }
        let unknown_total: usize = unknown_per_user.values().sum();

        // I5: every 202 is a row, for the right user.
        let lost: Vec<&Uuid> = accepted.keys().filter(|o| !in_db.contains_key(o)).collect();
        let wrong_user = accepted
            .iter()
            .filter(|(o, u)| in_db.get(o).is_some_and(|(du, _)| du != *u))
            .count();
        let mut lost_after_restart = 0;
        if let Some(healed) = allow.lost_state_before {
            let sent_at: HashMap<Uuid, Duration> = attempts
                .iter()
                .filter_map(|a| match a.outcome {
                    Outcome::Accepted(o) => Some((o, a.sent)),
                    _ => None,
                })
                .collect();
            let lost_later = lost.iter().filter(|o| sent_at[**o] > healed).count();
            lost_after_restart = lost_later;
            self.info(
                "202s lost with Redis state",
                format!(
                    "{} of {} acknowledged order_nos (requests sent before Redis came back) are in no row",
                    lost.len() - lost_later,
                    accepted.len()
                ),
            );
            self.check(
                "I5 202s after the restart persisted",
                lost_later == 0 && wrong_user == 0,
                format!(
                    "{lost_later} acknowledged for requests sent after Redis came back are in no row; {wrong_user} rows with another user"
                ),
            );
        } else {
            self.check(
                "I5 every 202 persisted",
                lost.is_empty() && wrong_user == 0,
                format!(
                    "{} acknowledged, {} missing, {} with another user{}",
                    accepted.len(),
                    lost.len(),
                    wrong_user,
                    lost.first()
                        .map_or(String::new(), |o| format!(" (e.g. {o})"))
                ),
            );
        }

        // No order the client was told was rejected; an unknown request at most once.
        let mut extra_per_user: HashMap<i64, usize> = HashMap::new();
        for (o, u, _, _) in &orders {
            if !accepted.contains_key(o) {
                *extra_per_user.entry(*u).or_default() += 1;
            }
        }
        let took_effect: usize = extra_per_user.values().sum();
        let unexplained: Vec<(i64, usize, usize)> = extra_per_user
            .iter()
            .map(|(u, n)| (*u, *n, unknown_per_user.get(u).copied().unwrap_or(0)))
            .filter(|(_, n, unknown)| n > unknown)
            .collect();
        self.check(
            "no order for a rejected request",
            unexplained.is_empty(),
            format!(
                "{took_effect} orders from {unknown_total} unknown-outcome requests; unexplained: {}{}",
                unexplained.len(),
                unexplained.first().map_or(String::new(), |(u, n, k)| format!(
                    " (e.g. user {u}: {n} orders without a 202, {k} unknown requests)"
                ))
            ),
        );
        self.check(
            "no wrong answers",
            unexpected.is_empty(),
            if unexpected.is_empty() {
                "only 202, sold_out, timeouts/5xx".to_string()
            } else {
                format!("unexpected: {unexpected:?}")
            },
        );

        // Stock and limits, from Postgres.
        let confirmed = orders.iter().filter(|o| o.2 == "confirmed").count() as i64;
        let failed = orders.iter().filter(|o| o.2 == "failed").count() as i64;
        let held: i64 = orders
            .iter()
            .filter(|o| o.2 != "failed")
            .map(|o| o.3 as i64)
            .sum();
        // Failed orders from intents a lost Redis state accepted and the
        // rebuilt sale had no stock left for (reason stock_lost): a 202 the
        // shopper lost, reported here, never an oversell.
        let (stock_lost,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND failure_reason = 'stock_lost'",
        )
        .bind(sale.event_id)
        .fetch_one(&rig.db.pool)
        .await
        .expect("read stock_lost");
        if allow.lost_state_before.is_some() {
            self.info(
                "202s refused after the rebuild (stock_lost, uncharged)",
                stock_lost.to_string(),
            );
            self.check(
                "no oversell (units held ≤ stock; confirmed + failed − stock_lost ≤ stock)",
                held <= sale.stock && confirmed + failed - stock_lost <= sale.stock,
                format!(
                    "confirmed {confirmed} + failed {failed} − stock_lost {stock_lost} ≤ stock {}; units held {held}",
                    sale.stock
                ),
            );
            self.check(
                "everyone could pay: no failed order but stock_lost",
                failed == stock_lost,
                format!("failed {failed}, of which stock_lost {stock_lost}"),
            );
        } else {
            self.check(
                "no oversell (confirmed + failed ≤ stock)",
                confirmed + failed <= sale.stock && held <= sale.stock,
                format!(
                    "confirmed {confirmed} + failed {failed} ≤ stock {}; units held {held}",
                    sale.stock
                ),
            );
            self.check(
                "everyone could pay: no failed order",
                failed == 0 && stock_lost == 0,
                format!("failed {failed}"),
            );
        }
        let mut per_user: HashMap<i64, i64> = HashMap::new();
        for (_, u, s, q) in &orders {
            if s != "failed" {
                *per_user.entry(*u).or_default() += *q as i64;
            }
        }
        let max_user = per_user.values().copied().max().unwrap_or(0);
        self.check(
            "I3 per-user ≤ limit (postgres)",
            max_user <= sale.per_user_limit,
            format!("max {max_user} ≤ limit {}", sale.per_user_limit),
        );
        if allow.lost_state_before.is_some() {
            // Only a 202 lost with Redis frees its unit for a second buyer.
            let lost_with_redis = lost.len() as i64 - lost_after_restart as i64;
            self.check(
                "202s ≤ stock + 202s lost with Redis (missing or stock_lost)",
                accepted.len() as i64 <= sale.stock + lost_with_redis + stock_lost,
                format!(
                    "{} acknowledged, stock {}, lost with Redis {lost_with_redis}, stock_lost {stock_lost}",
                    accepted.len(),
                    sale.stock
                ),
            );
        } else {
            self.check(
                "202s ≤ stock",
                accepted.len() as i64 <= sale.stock,
                format!("{} acknowledged, stock {}", accepted.len(), sale.stock),
            );
        }

        // Stock only goes down when everyone pays and nothing is lost, so a
        // 202 for a request sent after a sold_out answer means that answer was wrong.
        let after_sold_out = first_sold_out.map_or(0, |t| {
            attempts
                .iter()
                .filter(|a| matches!(a.outcome, Outcome::Accepted(_)) && a.sent > t)
                .count()
        });
        let detail = format!(
            "first sold_out at {}, 202s for requests sent later: {after_sold_out}",
            first_sold_out.map_or("never".into(), |t| format!("{:.3} s", t.as_secs_f64()))
        );
        if allow.lost_state_before.is_some() {
            self.info("sold_out answers (stock may return)", detail);
        } else {
            self.check("no premature sold_out", after_sold_out == 0, detail);
        }

        // I4 per user: initial − final balance = Σ their confirmed amounts.
        let (wrong_wallets, users_charged): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE w.balance <> $3 - coalesce(c.spent, 0)),
                    count(*) FILTER (WHERE c.spent IS NOT NULL)
             FROM wallets w
             LEFT JOIN (SELECT user_id, sum(amount)::int8 AS spent FROM orders
                        WHERE status = 'confirmed' GROUP BY user_id) c USING (user_id)
             WHERE w.user_id BETWEEN $1 AND $2",
        )
        .bind(sale.first_user)
        .bind(sale.first_user + sale.users - 1)
        .bind(sale.balance)
        .fetch_one(&rig.db.pool)
        .await
        .expect("wallet check");
        let (payments, paid, debits, debited, confirmed_amount): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM payments WHERE event_id = $1),
                        (SELECT coalesce(sum(amount), 0)::int8 FROM payments WHERE event_id = $1),
                        (SELECT count(*) FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1),
                        (SELECT coalesce(sum(d.amount), 0)::int8 FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1),
                        (SELECT coalesce(sum(amount), 0)::int8 FROM orders WHERE event_id = $1 AND status = 'confirmed')",
            )
            .bind(sale.event_id)
            .fetch_one(&rig.db.pool)
            .await
            .expect("money check");
        self.check(
            "I4 money exact",
            wrong_wallets == 0
                && payments == confirmed
                && debits == confirmed
                && paid == confirmed_amount
                && debited == confirmed_amount,
            format!(
                "{users_charged} wallets charged, {wrong_wallets} off; payments {payments} ({paid}), debits {debits} ({debited}), confirmed {confirmed} ({confirmed_amount})"
            ),
        );
    }

    /// The test's own read of Redis against Postgres truth, and no undersell.
    async fn redis_matches_postgres(&mut self, rig: &Rig, sale: &Sale, allow: Allow) {
        let client = rig.redis.client().await;
        let base = format!("{}:{{{}}}", rig.prefix, sale.event_id);
        let stock: Option<i64> = client
            .get(format!("{base}:stock"))
            .await
            .expect("GET stock");
        let bought: HashMap<String, i64> = client
            .hgetall(format!("{base}:bought"))
            .await
            .expect("HGETALL bought");
        let ledger: i64 = client.hlen(format!("{base}:ledger")).await.expect("HLEN");
        let _ = client.quit().await;

        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT user_id, sum(quantity)::int8 FROM orders
             WHERE event_id = $1 AND status <> 'failed' GROUP BY user_id",
        )
        .bind(sale.event_id)
        .fetch_all(&rig.db.pool)
        .await
        .expect("per-user sums");
        let truth: HashMap<String, i64> = rows.iter().map(|(u, q)| (u.to_string(), *q)).collect();
        let held: i64 = truth.values().sum();
        let buyers_differ = truth
            .keys()
            .chain(bought.keys())
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|u| truth.get(*u) != bought.get(*u))
            .count();
        self.check(
            "redis = postgres truth",
            stock == Some(sale.stock - held) && buyers_differ == 0 && ledger == 0,
            format!(
                "stock_left {stock:?} vs {} − {held}; {} buyers in redis, {} in postgres, {buyers_differ} differ; ledger {ledger}",
                sale.stock,
                bought.len(),
                truth.len()
            ),
        );
        let detail = format!("stock_left {stock:?}, units sold {held} of {}", sale.stock);
        if allow.lost_state_before.is_some() {
            // Stock a lost 202 gave back may be left if the load ended first.
            self.info("undersell", detail);
        } else {
            self.check("no undersell (stock_left = 0)", stock == Some(0), detail);
        }
    }

    async fn discrepancies(&mut self, rig: &Rig, allow: Allow) {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT kind, count(*), count(*) FILTER (WHERE repaired) FROM reconcile_discrepancies
             GROUP BY kind ORDER BY kind",
        )
        .fetch_all(&rig.db.pool)
        .await
        .expect("discrepancies");
        let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM reconcile_runs")
            .fetch_one(&rig.db.pool)
            .await
            .expect("runs");
        let table = if rows.is_empty() {
            "none".to_string()
        } else {
            rows.iter()
                .map(|(k, n, r)| format!("{k} ×{n} ({r} repaired)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let routine = ["unacked_intent", "unpersisted_intent"];
        let unexpected: Vec<&(String, i64, i64)> = rows
            .iter()
            .filter(|(k, _, _)| {
                allow.no_discrepancies_at_all
                    || !(routine.contains(&k.as_str()) || allow.repair_kinds.contains(&k.as_str()))
            })
            .collect();
        self.check(
            if allow.no_discrepancies_at_all {
                "no discrepancy recorded at all"
            } else {
                "no unexpected repairs"
            },
            unexpected.is_empty(),
            format!("{runs} reconcile runs; discrepancies: {table}"),
        );
    }
}

/// Discrepancy rows of one kind so far.
pub async fn discrepancy_count(rig: &Rig, kind: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM reconcile_discrepancies WHERE kind = $1")
            .bind(kind)
            .fetch_one(&rig.db.pool)
            .await
            .expect("discrepancy count");
    n
}
