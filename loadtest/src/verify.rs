//! After the crowd: wait for the writers to drain, then check the sale. The
//! engine's own invariant checker (SPEC §5) is asked first; then the
//! client-side truths that only the crowd knows are checked against Postgres
//! (read-only): every 202 persisted for its shopper, no order the crowd was
//! not given, idempotent retries, per-user limits, conservation, money, and
//! no undersell.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use sqlx::{postgres::PgPoolOptions, PgPool};
use uuid::Uuid;

use crate::{
    api::{AdminEvent, Api, Outcome, Signer},
    config::Plan,
    crowd::CrowdLog,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One line of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// `engine` (its invariant checker) or `client` (this program).
    pub source: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn client(name: &str, ok: bool, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            source: "client",
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail,
        }
    }

    fn skip(name: &str, source: &'static str, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            source,
            verdict: Verdict::Skip,
            detail,
        }
    }
}

/// How the drain went.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub drained: bool,
    /// From the last answer to `pending` = 0 (or to giving up).
    pub secs: f64,
    pub event: AdminEvent,
}

/// Polls the admin event until `pending` is 0 or `timeout` passes.
pub async fn wait_for_drain(api: &Api, event_id: i64, timeout: Duration) -> anyhow::Result<Drain> {
    let started = Instant::now();
    loop {
        let event = api.event(event_id).await?;
        if event.pending == 0 {
            return Ok(Drain {
                drained: true,
                secs: started.elapsed().as_secs_f64(),
                event,
            });
        }
        if started.elapsed() >= timeout {
            return Ok(Drain {
                drained: false,
                secs: started.elapsed().as_secs_f64(),
                event,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the run set up, needed to judge it.
pub struct Setup<'a> {
    pub plan: &'a Plan,
    pub event_id: i64,
    pub first_user_id: i64,
    /// Wallets were created by this run (none existed), so their initial
    /// balances are known.
    pub fresh_wallets: bool,
}

/// A row of `orders` for this event.
struct Row {
    user_id: i64,
    quantity: i64,
    amount: i64,
    failed: bool,
}

/// Every check, in report order.
pub async fn verify(
    api: &Api,
    signer: &Signer,
    setup: &Setup<'_>,
    log: &CrowdLog,
    drain: &Drain,
) -> Vec<Check> {
    let mut checks = vec![Check::client(
        "drain (pending = 0)",
        drain.drained,
        format!(
            "pending {} after {:.2}s (limit {}s)",
            drain.event.pending, drain.secs, setup.plan.drain_timeout_secs
        ),
    )];

    match api.invariants(setup.event_id).await {
        Ok(Some(inv)) => {
            for c in &inv.checks {
                checks.push(Check {
                    name: c.name.clone(),
                    source: "engine",
                    verdict: if c.ok { Verdict::Pass } else { Verdict::Fail },
                    detail: c.detail.clone(),
                });
            }
            if inv.checks.is_empty() {
                checks.push(Check {
                    name: "engine invariants".into(),
                    source: "engine",
                    verdict: if inv.ok { Verdict::Pass } else { Verdict::Fail },
                    detail: "no individual checks reported".into(),
                });
            }
        }
        Ok(None) => checks.push(Check::skip(
            "engine invariants",
            "engine",
            "this engine has no GET /admin/events/{id}/invariants; client checks only".into(),
        )),
        Err(err) => checks.push(Check {
            name: "engine invariants".into(),
            source: "engine",
            verdict: Verdict::Fail,
            detail: format!("{err:#}"),
        }),
    }

    checks.push(answers_check(log));

    match client_checks(setup, log, &drain.event).await {
        Ok(more) => checks.extend(more),
        Err(err) => checks.push(Check::client(
            "client checks against Postgres",
            false,
            format!("{err:#}"),
        )),
    }

    checks.push(order_api_check(api, signer, setup, log).await);
    checks
}

async fn client_checks(
    setup: &Setup<'_>,
    log: &CrowdLog,
    event: &AdminEvent,
) -> anyhow::Result<Vec<Check>> {
    let plan = setup.plan;
    let k = &plan.knobs;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&plan.database_url)
        .await
        .context("connecting to Postgres (--database-url) for verification")?;
    let rows = orders(&pool, setup.event_id).await?;
    let mut checks = Vec::new();

    // --- I5: every 202 persisted, for its shopper ---------------------------
    let mut acked: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for a in &log.accepted {
        acked.insert(a.order_no, (a.user_id, a.quantity));
    }
    let (mut missing, mut wrong_user, mut failed_acked) = (Vec::new(), Vec::new(), 0u64);
    for (no, (user, qty)) in &acked {
        match rows.get(no) {
            None => missing.push(*no),
            Some(r) if r.user_id != *user || r.quantity != *qty => wrong_user.push(*no),
            Some(r) => failed_acked += u64::from(r.failed),
        }
    }
    checks.push(Check::client(
        "I5 every 202 order_no persisted for its shopper",
        missing.is_empty() && wrong_user.is_empty(),
        format!(
            "{} distinct 202 order_nos, {} found in orders, {} missing{}, {} with another user/quantity{}",
            acked.len(),
            acked.len() - missing.len(),
            missing.len(),
            sample_list(&missing),
            wrong_user.len(),
            sample_list(&wrong_user),
        ),
    ));

    // --- I5: no order the crowd was not told about ----------------------------
    let ambiguous: HashSet<i64> = log.ambiguous_users.iter().copied().collect();
    let (mut explained, mut unexplained) = (Vec::new(), Vec::new());
    for (no, r) in &rows {
        if !acked.contains_key(no) {
            if ambiguous.contains(&r.user_id) {
                explained.push(*no);
            } else {
                unexplained.push(*no);
            }
        }
    }
    let ambiguous_requests = log
        .samples
        .iter()
        .filter(|s| s.outcome.is_ambiguous())
        .count();
    checks.push(Check::client(
        "I5 no order without a 202 (rejections left nothing)",
        unexplained.is_empty(),
        format!(
            "{} orders in Postgres, {} never acknowledged: {} from shoppers with a timeout/5xx \
             (allowed; {} such requests), {} from shoppers who were only rejected{}",
            rows.len(),
            explained.len() + unexplained.len(),
            explained.len(),
            ambiguous_requests,
            unexplained.len(),
            sample_list(&unexplained),
        ),
    ));

    // --- order count -----------------------------------------------------------
    let non_failed = rows.values().filter(|r| !r.failed).count() as u64;
    let extra_non_failed = explained.iter().filter(|no| !rows[*no].failed).count() as u64;
    let expected = acked.len() as u64 - missing.len() as u64 - failed_acked + extra_non_failed;
    checks.push(Check::client(
        "non-failed orders = distinct 202s - failed",
        non_failed == expected,
        format!(
            "{non_failed} non-failed in Postgres; {} distinct 202s - {} missing - {failed_acked} failed \
             + {extra_non_failed} from ambiguous requests = {expected}",
            acked.len(),
            missing.len(),
        ),
    ));

    // --- I6: idempotent retries ---------------------------------------------------
    checks.push(idempotency_check(log));

    // --- I3: per-user limit ----------------------------------------------------------
    let mut per_user: HashMap<i64, i64> = HashMap::new();
    for r in rows.values().filter(|r| !r.failed) {
        *per_user.entry(r.user_id).or_default() += r.quantity;
    }
    let over: Vec<(i64, i64)> = per_user
        .iter()
        .filter(|(_, q)| **q > k.per_user_limit)
        .map(|(u, q)| (*u, *q))
        .collect();
    let top = per_user.values().copied().max().unwrap_or(0);
    checks.push(Check::client(
        "I3 no shopper above per_user_limit",
        over.is_empty(),
        format!(
            "{} buyers, most units by one buyer {top}, limit {}, {} above{}",
            per_user.len(),
            k.per_user_limit,
            over.len(),
            sample_list(
                &over
                    .iter()
                    .map(|(u, q)| format!("user {u}: {q}"))
                    .collect::<Vec<_>>()
            ),
        ),
    ));

    // --- I1/I2: conservation ----------------------------------------------------------
    let sold_units: i64 = rows
        .values()
        .filter(|r| !r.failed)
        .map(|r| r.quantity)
        .sum();
    let conserved = event.stock_total == event.stock_left + sold_units;
    let sold_matches = event.sold == sold_units;
    checks.push(Check::client(
        "I1 stock_total = stock_left + units of non-failed orders",
        conserved && sold_matches && event.stock_left >= 0,
        format!(
            "stock_total {} = stock_left {} + {sold_units} sold in Postgres{}; engine `sold` {}{}",
            event.stock_total,
            event.stock_left,
            if conserved { "" } else { " (MISMATCH)" },
            event.sold,
            if sold_matches { "" } else { " (MISMATCH)" },
        ),
    ));

    // --- I4: money --------------------------------------------------------------------
    checks.push(money_check(&pool, setup, &rows).await?);

    // --- no undersell -------------------------------------------------------------------
    let sold_out_answers = log
        .samples
        .iter()
        .filter(|s| s.outcome == Outcome::SoldOut)
        .count();
    let sale_users: HashSet<i64> = log.sale_users.iter().copied().collect();
    let demand = sale_users.len() as i64 * k.quantity;
    let demand_met = sold_out_answers > 0 || demand >= event.stock_total;
    if plan.payers() < k.users {
        checks.push(Check::skip(
            "no undersell",
            "client",
            format!(
                "{}% of shoppers cannot pay, so returned stock may legitimately be left \
                 (stock_left {})",
                (k.cannot_pay_share * 100.0).round(),
                event.stock_left
            ),
        ));
    } else if !demand_met {
        checks.push(Check::skip(
            "no undersell",
            "client",
            format!(
                "demand ({demand} units from {} shoppers) stayed below stock {}",
                sale_users.len(),
                event.stock_total
            ),
        ));
    } else {
        checks.push(Check::client(
            "no undersell (demand >= stock, all can pay => stock_left = 0)",
            event.stock_left == 0,
            format!(
                "stock_left {}, {sold_out_answers} sold_out answers, demand {demand} units from {} shoppers",
                event.stock_left,
                sale_users.len()
            ),
        ));
    }

    pool.close().await;
    Ok(checks)
}

async fn orders(pool: &PgPool, event_id: i64) -> anyhow::Result<HashMap<Uuid, Row>> {
    let rows: Vec<(Uuid, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT order_no, user_id, quantity::bigint, amount::bigint, status::text \
         FROM orders WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
    .context("SELECT ... FROM orders")?;
    Ok(rows
        .into_iter()
        .map(|(no, user_id, quantity, amount, status)| {
            (
                no,
                Row {
                    user_id,
                    quantity,
                    amount,
                    failed: status == "failed",
                },
            )
        })
        .collect())
}

fn idempotency_check(log: &CrowdLog) -> Check {
    if log.idem.is_empty() {
        return Check::skip(
            "I6 same Idempotency-Key => same order_no",
            "client",
            "no retries in this scenario".into(),
        );
    }
    let transient = |o: Outcome| o.is_ambiguous() || o == Outcome::RateLimited;
    let (mut bad, mut replayed_same, mut in_progress, mut inconclusive, mut rejection_then_accept) =
        (Vec::new(), 0u64, 0u64, 0u64, 0u64);
    for p in &log.idem {
        let (a, b) = (p.first, p.second);
        let accepted: HashSet<Uuid> = [a, b]
            .iter()
            .filter(|(o, _)| *o == Outcome::Accepted)
            .filter_map(|(_, n)| *n)
            .collect();
        if accepted.len() > 1 {
            bad.push(format!("user {}: two order_nos for one key", p.user_id));
            continue;
        }
        let ok_pair = |x: (Outcome, Option<Uuid>), y: (Outcome, Option<Uuid>)| -> Option<bool> {
            // Given that x was accepted, is y consistent with one side effect?
            if x.0 != Outcome::Accepted {
                return Some(true);
            }
            match y.0 {
                Outcome::Accepted => Some(y.1 == x.1),
                Outcome::InProgress => Some(true),
                o if transient(o) => None,
                _ => Some(false),
            }
        };
        let verdicts = [
            ok_pair(a, b),
            if p.concurrent {
                ok_pair(b, a)
            } else {
                Some(true)
            },
        ];
        if verdicts.contains(&Some(false)) {
            bad.push(format!(
                "user {}, {}: {} and {}",
                p.user_id,
                if p.concurrent {
                    "concurrent"
                } else {
                    "one after the other"
                },
                a.0.label(),
                b.0.label()
            ));
        } else if verdicts.contains(&None) {
            inconclusive += 1;
        } else if a.0 == Outcome::Accepted && b.0 == Outcome::Accepted {
            replayed_same += 1;
        } else if a.0 == Outcome::InProgress || b.0 == Outcome::InProgress {
            in_progress += 1;
        }
        if !p.concurrent && a.0 != Outcome::Accepted && !transient(a.0) && b.0 == Outcome::Accepted
        {
            rejection_then_accept += 1;
        }
    }
    let mut detail = format!(
        "{} keys sent twice: {replayed_same} replayed the same order_no, {in_progress} answered in_progress, \
         {inconclusive} inconclusive (timeout/429/5xx), {} violations{}",
        log.idem.len(),
        bad.len(),
        sample_list(&bad),
    );
    if rejection_then_accept > 0 {
        let _ = write!(
            detail,
            "; note: {rejection_then_accept} rejected attempts were accepted on replay (rejections not cached)"
        );
    }
    Check::client(
        "I6 same Idempotency-Key => same order_no",
        bad.is_empty(),
        detail,
    )
}

async fn money_check(
    pool: &PgPool,
    setup: &Setup<'_>,
    rows: &HashMap<Uuid, Row>,
) -> anyhow::Result<Check> {
    const NAME: &str = "I4 payments = confirmed amounts = wallet debits";
    let plan = setup.plan;
    let confirmed: i64 = rows.values().filter(|r| !r.failed).map(|r| r.amount).sum();
    let (paid, payments): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount), 0)::bigint, COUNT(*) FROM payments WHERE event_id = $1",
    )
    .bind(setup.event_id)
    .fetch_one(pool)
    .await
    .context("SELECT ... FROM payments")?;
    let confirmed_orders = rows.values().filter(|r| !r.failed).count() as i64;
    let mut ok = paid == confirmed && payments == confirmed_orders;
    let mut detail = format!(
        "payments {payments} summing {paid}; confirmed orders {confirmed_orders} summing {confirmed}"
    );

    if setup.fresh_wallets {
        let last = setup.first_user_id + plan.knobs.users as i64;
        let wallets: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT user_id, balance FROM wallets WHERE user_id >= $1 AND user_id < $2",
        )
        .bind(setup.first_user_id)
        .bind(last)
        .fetch_all(pool)
        .await
        .context("SELECT ... FROM wallets")?;
        let mut spent: HashMap<i64, i64> = HashMap::new();
        for r in rows.values().filter(|r| !r.failed) {
            *spent.entry(r.user_id).or_default() += r.amount;
        }
        let payers_end = setup.first_user_id + plan.payers() as i64;
        let mut off = Vec::new();
        let mut debited = 0i64;
        for (user, balance) in &wallets {
            let initial = if *user < payers_end {
                plan.funded_balance()
            } else {
                0
            };
            let s = spent.get(user).copied().unwrap_or(0);
            debited += initial - balance;
            if initial - balance != s || *balance < 0 {
                off.push(format!("user {user}: {initial} - {balance} != {s}"));
            }
        }
        ok &= off.is_empty() && debited == confirmed;
        let _ = write!(
            detail,
            "; {} wallets debited {debited} in total, {} shoppers where initial - final != their confirmed amounts{}",
            wallets.len(),
            off.len(),
            sample_list(&off)
        );
    } else {
        let _ = write!(
            detail,
            "; per-wallet check skipped (wallets existed before this run)"
        );
    }
    Ok(Check::client(NAME, ok, detail))
}

/// The order route shows each sampled 202 to its owner and to nobody else.
async fn order_api_check(api: &Api, signer: &Signer, setup: &Setup<'_>, log: &CrowdLog) -> Check {
    const NAME: &str = "GET /api/orders/{no}: owner sees it, others get 404";
    const SAMPLE: usize = 50;
    let mut seen = HashSet::new();
    let distinct: Vec<_> = log
        .accepted
        .iter()
        .filter(|a| seen.insert(a.order_no))
        .collect();
    if distinct.is_empty() {
        return Check::skip(NAME, "client", "no accepted orders".into());
    }
    let step = (distinct.len() / SAMPLE).max(1);
    let users = setup.plan.knobs.users as i64;
    let mut problems = Vec::new();
    let mut checked = 0;
    for a in distinct.iter().step_by(step).take(SAMPLE) {
        checked += 1;
        match api.order(a.order_no, signer.bearer(a.user_id)).await {
            Ok(Some(o)) if o.order_no == a.order_no && o.user_id == a.user_id => {
                if !matches!(o.status.as_str(), "confirmed" | "failed") {
                    problems.push(format!("{}: status {} after drain", a.order_no, o.status));
                }
            }
            Ok(Some(o)) => problems.push(format!("{}: shows user {}", a.order_no, o.user_id)),
            Ok(None) => problems.push(format!("{}: 404 for its owner", a.order_no)),
            Err(err) => problems.push(format!("{}: {err:#}", a.order_no)),
        }
        // Another shopper of the run (or one outside it when the run has one user).
        let idx = a.user_id - setup.first_user_id;
        let other = setup.first_user_id + (idx + 1) % users.max(2);
        match api.order(a.order_no, signer.bearer(other)).await {
            Ok(None) => {}
            Ok(Some(_)) => problems.push(format!("{}: visible to user {other}", a.order_no)),
            Err(err) => problems.push(format!("{} as user {other}: {err:#}", a.order_no)),
        }
    }
    Check::client(
        NAME,
        problems.is_empty(),
        format!(
            "{checked} sampled orders, {} problems{}",
            problems.len(),
            sample_list(&problems)
        ),
    )
}

/// A well-formed crowd only ever gets the outcomes of the contract: a 401,
/// 400/422 or a 500 means the engine or this client broke it, and the rest of
/// the checks would be judging a sale that did not happen.
fn answers_check(log: &CrowdLog) -> Check {
    let count = |o: Outcome| log.samples.iter().filter(|s| s.outcome == o).count();
    let (other, server, accepted) = (
        count(Outcome::OtherRejected),
        count(Outcome::ServerError),
        count(Outcome::Accepted),
    );
    let mut unexpected: Vec<String> = log
        .unexpected
        .iter()
        .filter(|(k, _)| !k.starts_with("transport"))
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    unexpected.sort();
    Check::client(
        "every answer is a contract outcome, and some were 202",
        other == 0 && server == 0 && accepted > 0,
        format!(
            "{accepted} accepted, {other} unexpected 4xx, {server} 5xx other than 503{}",
            sample_list(&unexpected)
        ),
    )
}

/// ` (e.g. a, b, c)` for the first few items of a non-empty list.
fn sample_list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(3).map(ToString::to_string).collect();
    format!(
        " (e.g. {}{})",
        shown.join(", "),
        if items.len() > 3 { ", ..." } else { "" }
    )
}
