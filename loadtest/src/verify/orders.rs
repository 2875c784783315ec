//! The client-side truths about the sale's orders, read from Postgres: every
//! 202 persisted for its shopper and nothing else (I5), the order count, the
//! per-user limit (I3), conservation of stock (I1), and no undersell.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use super::check::{sample_list, Check};
use crate::{
    api::{AdminEvent, Outcome},
    crowd::CrowdLog,
    plan::Plan,
};

/// A row of `orders` for this event.
pub(super) struct Row {
    pub user_id: i64,
    pub quantity: i64,
    pub amount: i64,
    pub failed: bool,
    /// Cancelled by its shopper or refunded by an operator: paid, then paid back.
    pub refunded: bool,
}

impl Row {
    /// Holds its units and its money: neither failed nor refunded.
    pub fn holds(&self) -> bool {
        !self.failed && !self.refunded
    }
}

/// The event's orders by order number.
pub(super) async fn read(pool: &PgPool, event_id: i64) -> anyhow::Result<HashMap<Uuid, Row>> {
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
                    refunded: status == "cancelled" || status == "refunded",
                },
            )
        })
        .collect())
}

/// The crowd's 202s held against the rows.
pub(super) struct Acked {
    /// Distinct acknowledged order numbers: (shopper, quantity).
    orders: HashMap<Uuid, (i64, i64)>,
    missing: Vec<Uuid>,
    wrong_user: Vec<Uuid>,
    /// Acknowledged orders that failed later (the shopper could not pay).
    failed: u64,
}

impl Acked {
    /// Holds each distinct 202 against the row of its order number.
    pub(super) fn new(log: &CrowdLog, rows: &HashMap<Uuid, Row>) -> Self {
        let mut orders: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for a in &log.accepted {
            orders.insert(a.order_no, (a.user_id, a.quantity));
        }
        let (mut missing, mut wrong_user, mut failed) = (Vec::new(), Vec::new(), 0u64);
        for (no, (user, qty)) in &orders {
            match rows.get(no) {
                None => missing.push(*no),
                Some(r) if r.user_id != *user || r.quantity != *qty => wrong_user.push(*no),
                Some(r) => failed += u64::from(r.failed),
            }
        }
        Self {
            orders,
            missing,
            wrong_user,
            failed,
        }
    }
}

/// I5: every 202 persisted, for its shopper.
pub(super) fn persisted_check(acked: &Acked) -> Check {
    let (missing, wrong_user) = (&acked.missing, &acked.wrong_user);
    Check::client(
        "I5 every 202 order_no persisted for its shopper",
        missing.is_empty() && wrong_user.is_empty(),
        format!(
            "{} distinct 202 order_nos, {} found in orders, {} missing{}, {} with another user/quantity{}",
            acked.orders.len(),
            acked.orders.len() - missing.len(),
            missing.len(),
            sample_list(missing),
            wrong_user.len(),
            sample_list(wrong_user),
        ),
    )
}

/// I5: no order the crowd was not told about, except from shoppers whose
/// request may have left one unseen. Returns those explained orders too.
pub(super) fn unacknowledged_check(
    acked: &Acked,
    rows: &HashMap<Uuid, Row>,
    log: &CrowdLog,
) -> (Check, Vec<Uuid>) {
    let ambiguous: HashSet<i64> = log.ambiguous_users.iter().copied().collect();
    let (mut explained, mut unexplained) = (Vec::new(), Vec::new());
    for (no, r) in rows {
        if !acked.orders.contains_key(no) {
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
    let check = Check::client(
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
    );
    (check, explained)
}

/// The non-failed orders are exactly the acknowledged ones that did not fail,
/// plus those of ambiguous requests.
pub(super) fn count_check(acked: &Acked, rows: &HashMap<Uuid, Row>, explained: &[Uuid]) -> Check {
    let failed_acked = acked.failed;
    let non_failed = rows.values().filter(|r| !r.failed).count() as u64;
    let extra_non_failed = explained.iter().filter(|no| !rows[*no].failed).count() as u64;
    let expected =
        acked.orders.len() as u64 - acked.missing.len() as u64 - failed_acked + extra_non_failed;
    Check::client(
        "non-failed orders = distinct 202s - failed",
        non_failed == expected,
        format!(
            "{non_failed} non-failed in Postgres; {} distinct 202s - {} missing - {failed_acked} failed \
             + {extra_non_failed} from ambiguous requests = {expected}",
            acked.orders.len(),
            acked.missing.len(),
        ),
    )
}

/// I3: no shopper holds more units than the per-user limit.
pub(super) fn per_user_check(rows: &HashMap<Uuid, Row>, per_user_limit: i64) -> Check {
    let mut per_user: HashMap<i64, i64> = HashMap::new();
    for r in rows.values().filter(|r| r.holds()) {
        *per_user.entry(r.user_id).or_default() += r.quantity;
    }
    let over: Vec<(i64, i64)> = per_user
        .iter()
        .filter(|(_, q)| **q > per_user_limit)
        .map(|(u, q)| (*u, *q))
        .collect();
    let top = per_user.values().copied().max().unwrap_or(0);
    Check::client(
        "I3 no shopper above per_user_limit",
        over.is_empty(),
        format!(
            "{} buyers, most units by one buyer {top}, limit {}, {} above{}",
            per_user.len(),
            per_user_limit,
            over.len(),
            sample_list(
                &over
                    .iter()
                    .map(|(u, q)| format!("user {u}: {q}"))
                    .collect::<Vec<_>>()
            ),
        ),
    )
}

/// I1/I2: the stock the event started with is what is left plus what sold.
pub(super) fn conservation_check(rows: &HashMap<Uuid, Row>, event: &AdminEvent) -> Check {
    let sold_units: i64 = rows
        .values()
        .filter(|r| r.holds())
        .map(|r| r.quantity)
        .sum();
    let conserved = event.stock_total == event.stock_left + sold_units;
    let sold_matches = event.sold == sold_units;
    Check::client(
        "I1 stock_total = stock_left + units of confirmed orders (refunded ones returned)",
        conserved && sold_matches && event.stock_left >= 0,
        format!(
            "stock_total {} = stock_left {} + {sold_units} sold in Postgres{}; engine `sold` {}{}",
            event.stock_total,
            event.stock_left,
            if conserved { "" } else { " (MISMATCH)" },
            event.sold,
            if sold_matches { "" } else { " (MISMATCH)" },
        ),
    )
}

/// Refunds (a `--cancel-share` run): every cancel answered 200, each
/// cancelled order is `cancelled` in Postgres with exactly one refund row,
/// and the returned units were sold again (more 202s than stock).
pub(super) fn refunds_check(
    acked: &Acked,
    rows: &HashMap<Uuid, Row>,
    refund_rows: i64,
    log: &CrowdLog,
    event: &AdminEvent,
) -> Check {
    let cancelled: HashSet<Uuid> = log.cancelled.iter().copied().collect();
    let not_cancelled: Vec<Uuid> = cancelled
        .iter()
        .filter(|no| !rows.get(*no).is_some_and(|r| r.refunded))
        .copied()
        .collect();
    let refunded_rows = rows.values().filter(|r| r.refunded).count() as i64;
    let resold = acked.orders.len() as i64 > event.stock_total;
    Check::client(
        "refunds: one per cancel, every cancel 200, returned units resold",
        log.cancel_failures.is_empty()
            && not_cancelled.is_empty()
            && refund_rows == cancelled.len() as i64
            && refunded_rows == refund_rows
            && resold,
        format!(
            "{} cancels answered 200 ({} order_pending retries), failures {:?}; {refund_rows} refund rows, \
             {refunded_rows} orders refunded, {} cancelled but not refunded{}; {} distinct 202s for a stock of {}",
            cancelled.len(),
            log.cancel_pending_retries,
            log.cancel_failures,
            not_cancelled.len(),
            sample_list(&not_cancelled),
            acked.orders.len(),
            event.stock_total
        ),
    )
}

/// No undersell: when demand met the stock and everyone could pay, nothing
/// is left; skipped when either does not hold.
pub(super) fn undersell_check(plan: &Plan, log: &CrowdLog, event: &AdminEvent) -> Check {
    let k = &plan.knobs;
    let sold_out_answers = log
        .samples
        .iter()
        .filter(|s| s.outcome == Outcome::SoldOut)
        .count();
    let sale_users: HashSet<i64> = log.sale_users.iter().copied().collect();
    let demand = sale_users.len() as i64 * k.quantity;
    let demand_met = sold_out_answers > 0 || demand >= event.stock_total;
    if !log.cancelled.is_empty() {
        Check::skip(
            "no undersell",
            "client",
            format!(
                "{} orders were cancelled, so units returned after the crowd left may be unsold \
                 (stock_left {})",
                log.cancelled.len(),
                event.stock_left
            ),
        )
    } else if plan.payers() < k.users {
        Check::skip(
            "no undersell",
            "client",
            format!(
                "{}% of shoppers cannot pay, so returned stock may legitimately be left \
                 (stock_left {})",
                (k.cannot_pay_share * 100.0).round(),
                event.stock_left
            ),
        )
    } else if !demand_met {
        Check::skip(
            "no undersell",
            "client",
            format!(
                "demand ({demand} units from {} shoppers) stayed below stock {}",
                sale_users.len(),
                event.stock_total
            ),
        )
    } else {
        Check::client(
            "no undersell (demand >= stock, all can pay => stock_left = 0)",
            event.stock_left == 0,
            format!(
                "stock_left {}, {sold_out_answers} sold_out answers, demand {demand} units from {} shoppers",
                event.stock_left,
                sale_users.len()
            ),
        )
    }
}
