//! What every client was told, held against Postgres: every 202 is a row
//! for its shopper (I5), no order for a request told "no", stock and limits,
//! and every wallet charged exactly its confirmed amounts (I4).

use std::{collections::HashMap, time::Duration};

use uuid::Uuid;

use super::{Allow, Verdict};
use crate::{
    harness::{Rig, Sale},
    load::{Attempt, Outcome},
};

/// The clients' answers, and Postgres's orders of the sale.
struct Truth {
    /// (order_no, user_id, status, quantity)
    orders: Vec<(Uuid, i64, String, i32)>,
    /// order_no -> shopper of every 202.
    accepted: HashMap<Uuid, i64>,
    unknown_per_user: HashMap<i64, usize>,
    first_sold_out: Option<Duration>,
    unexpected: HashMap<String, usize>,
    /// 202s with no row.
    lost: Vec<Uuid>,
    /// Of those, 202s for requests sent after Redis came back.
    lost_after_restart: usize,
    stock_lost: i64,
}

impl Verdict {
    /// I5 and friends, from the clients' answers against Postgres.
    pub(super) async fn client_truth(
        &mut self,
        rig: &Rig,
        sale: &Sale,
        attempts: &[Attempt],
        allow: Allow,
    ) {
        let truth = Truth::read(rig, sale, attempts, allow).await;
        self.acknowledged_persisted(&truth, allow);
        self.nothing_for_refusals(&truth);
        self.stock_and_limits(&truth, sale, attempts, allow);
        self.money(rig, sale, &truth).await;
    }
}

impl Truth {
    async fn read(rig: &Rig, sale: &Sale, attempts: &[Attempt], allow: Allow) -> Self {
        let orders: Vec<(Uuid, i64, String, i32)> = sqlx::query_as(
            "SELECT order_no, user_id, status, quantity FROM orders WHERE event_id = $1",
        )
        .bind(sale.event_id)
        .fetch_all(&rig.db.pool)
        .await
        .expect("read orders");

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
                    if code == "not_active"
                        && (allow.lost_state_before.is_some()
                            || allow.ended_by_operator.is_some()) => {}
                Outcome::Rejected(status, code) => {
                    *unexpected.entry(format!("{status} {code}")).or_default() += 1
                }
                Outcome::NotSent => {}
            }
        }

        let in_db: HashMap<Uuid, i64> = orders.iter().map(|(o, u, _, _)| (*o, *u)).collect();
        let lost: Vec<Uuid> = accepted
            .keys()
            .filter(|o| !in_db.contains_key(o))
            .copied()
            .collect();
        let lost_after_restart = allow.lost_state_before.map_or(0, |healed| {
            let sent_at: HashMap<Uuid, Duration> = attempts
                .iter()
                .filter_map(|a| match a.outcome {
                    Outcome::Accepted(o) => Some((o, a.sent)),
                    _ => None,
                })
                .collect();
            lost.iter().filter(|o| sent_at[*o] > healed).count()
        });
        // Failed orders from intents a lost (or older) Redis state accepted
        // and the sale had no stock left for (reason stock_lost): a 202 the
        // shopper lost, reported, never an oversell.
        let (stock_lost,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM orders WHERE event_id = $1 AND failure_reason = 'stock_lost'",
        )
        .bind(sale.event_id)
        .fetch_one(&rig.db.pool)
        .await
        .expect("read stock_lost");
        Self {
            orders,
            accepted,
            unknown_per_user,
            first_sold_out,
            unexpected,
            lost,
            lost_after_restart,
            stock_lost,
        }
    }

    fn wrong_user(&self) -> usize {
        let in_db: HashMap<Uuid, i64> = self.orders.iter().map(|(o, u, _, _)| (*o, *u)).collect();
        self.accepted
            .iter()
            .filter(|(o, u)| in_db.get(o).is_some_and(|du| du != *u))
            .count()
    }
}

impl Verdict {
    /// I5: every 202 is a row, for the right user.
    fn acknowledged_persisted(&mut self, truth: &Truth, allow: Allow) {
        let (accepted, lost) = (&truth.accepted, &truth.lost);
        let wrong_user = truth.wrong_user();
        if allow.lost_state_before.is_some() {
            let lost_later = truth.lost_after_restart;
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
    }

    /// No order the client was told was rejected; an unknown request at most once.
    fn nothing_for_refusals(&mut self, truth: &Truth) {
        let (orders, accepted) = (&truth.orders, &truth.accepted);
        let (unknown_per_user, unexpected) = (&truth.unknown_per_user, &truth.unexpected);
        let unknown_total: usize = unknown_per_user.values().sum();
        let mut extra_per_user: HashMap<i64, usize> = HashMap::new();
        for (o, u, _, _) in orders {
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
    }

    /// Stock and limits, from Postgres.
    fn stock_and_limits(&mut self, truth: &Truth, sale: &Sale, attempts: &[Attempt], allow: Allow) {
        let (orders, accepted, lost) = (&truth.orders, &truth.accepted, &truth.lost);
        let (stock_lost, lost_after_restart) = (truth.stock_lost, truth.lost_after_restart);
        let confirmed = orders.iter().filter(|o| o.2 == "confirmed").count() as i64;
        let failed = orders.iter().filter(|o| o.2 == "failed").count() as i64;
        let refunded = orders
            .iter()
            .filter(|o| o.2 == "cancelled" || o.2 == "refunded")
            .count() as i64;
        let held: i64 = orders
            .iter()
            .filter(|o| o.2 == "confirmed")
            .map(|o| o.3 as i64)
            .sum();
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
        for (_, u, s, q) in orders {
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
                "202s ≤ stock + units refunded (sold again)",
                accepted.len() as i64 <= sale.stock + refunded,
                format!(
                    "{} acknowledged, stock {}, refunded {refunded}",
                    accepted.len(),
                    sale.stock
                ),
            );
        }

        // Stock only goes down when everyone pays and nothing is lost, so a
        // 202 for a request sent after a sold_out answer means that answer was wrong.
        let after_sold_out = truth.first_sold_out.map_or(0, |t| {
            attempts
                .iter()
                .filter(|a| matches!(a.outcome, Outcome::Accepted(_)) && a.sent > t)
                .count()
        });
        let detail = format!(
            "first sold_out at {}, 202s for requests sent later: {after_sold_out}",
            truth
                .first_sold_out
                .map_or("never".into(), |t| format!("{:.3} s", t.as_secs_f64()))
        );
        if allow.lost_state_before.is_some() || allow.stock_returns || allow.stock_added {
            self.info("sold_out answers (stock may return)", detail);
        } else {
            self.check("no premature sold_out", after_sold_out == 0, detail);
        }
    }

    /// I4 per user: initial − final balance = Σ their confirmed amounts.
    async fn money(&mut self, rig: &Rig, sale: &Sale, truth: &Truth) {
        let confirmed = truth.orders.iter().filter(|o| o.2 == "confirmed").count() as i64;
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
        let refunded = truth
            .orders
            .iter()
            .filter(|o| o.2 == "cancelled" || o.2 == "refunded")
            .count() as i64;
        let (payments, paid, debits, debited, confirmed_amount, refunds, refunds_amount, credited): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payments WHERE event_id = $1),
                    (SELECT coalesce(sum(amount), 0)::int8 FROM payments WHERE event_id = $1),
                    (SELECT count(*) FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1),
                    (SELECT coalesce(sum(d.amount), 0)::int8 FROM wallet_debits d JOIN orders o USING (order_no) WHERE o.event_id = $1),
                    (SELECT coalesce(sum(amount), 0)::int8 FROM orders WHERE event_id = $1 AND status = 'confirmed'),
                    (SELECT count(*) FROM refunds WHERE event_id = $1),
                    (SELECT coalesce(sum(amount), 0)::int8 FROM refunds WHERE event_id = $1),
                    (SELECT coalesce(sum(l.delta), 0)::int8 FROM wallet_ledger l JOIN orders o USING (order_no) WHERE o.event_id = $1 AND l.kind = 'refund')",
        )
        .bind(sale.event_id)
        .fetch_one(&rig.db.pool)
        .await
        .expect("money check");
        self.check(
            "I4 money exact",
            wrong_wallets == 0
                && payments == confirmed + refunded
                && debits == payments
                && refunds == refunded
                && paid - refunds_amount == confirmed_amount
                && debited - credited == confirmed_amount,
            format!(
                "{users_charged} wallets charged, {wrong_wallets} off; payments {payments} ({paid}), debits {debits} ({debited}), refunds {refunds} ({refunds_amount}, credited {credited}), confirmed {confirmed} ({confirmed_amount})"
            ),
        );
    }
}
