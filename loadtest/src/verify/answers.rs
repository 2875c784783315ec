//! Checks that the crowd's own log decides, without asking the engine:
//! every answer is one of the contract, and one `Idempotency-Key` never
//! yields two orders (I6).

use std::{collections::HashSet, fmt::Write as _};

use uuid::Uuid;

use super::check::{sample_list, Check};
use crate::{
    api::Outcome,
    crowd::{CrowdLog, IdemPair},
};

/// A well-formed crowd only ever gets the outcomes of the contract: a 401,
/// 400/422 or a 500 means the engine or this client broke it, and the rest of
/// the checks would be judging a sale that did not happen.
pub(super) fn answers_check(log: &CrowdLog) -> Check {
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

/// I6: the two answers to one key are consistent with at most one order.
pub(super) fn idempotency_check(log: &CrowdLog) -> Check {
    if log.idem.is_empty() {
        return Check::skip(
            "I6 same Idempotency-Key => same order_no",
            "client",
            "no retries in this scenario".into(),
        );
    }
    let (mut bad, mut replayed_same, mut in_progress, mut inconclusive, mut rejection_then_accept) =
        (Vec::new(), 0u64, 0u64, 0u64, 0u64);
    for p in &log.idem {
        match judge(p) {
            Pair::Violation(why) => bad.push(why),
            Pair::Inconclusive => inconclusive += 1,
            Pair::Replayed => replayed_same += 1,
            Pair::InProgress => in_progress += 1,
            Pair::Consistent => {}
        }
        let (a, b) = (p.first.0, p.second.0);
        if !p.concurrent && a != Outcome::Accepted && !is_transient(a) && b == Outcome::Accepted {
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

/// How the two answers to one key went.
enum Pair {
    /// More than one side effect, or an answer that denies the first one.
    Violation(String),
    /// A timeout, 429 or 5xx leaves it open.
    Inconclusive,
    /// Both accepted with the same order number.
    Replayed,
    /// One was told the other is still in progress.
    InProgress,
    /// Consistent in another way (e.g. both rejected).
    Consistent,
}

/// An answer that says nothing final about the key.
fn is_transient(o: Outcome) -> bool {
    o.is_ambiguous() || o == Outcome::RateLimited
}

fn judge(p: &IdemPair) -> Pair {
    let (a, b) = (p.first, p.second);
    let accepted: HashSet<Uuid> = [a, b]
        .iter()
        .filter(|(o, _)| *o == Outcome::Accepted)
        .filter_map(|(_, n)| *n)
        .collect();
    if accepted.len() > 1 {
        return Pair::Violation(format!("user {}: two order_nos for one key", p.user_id));
    }
    let verdicts = [
        consistent(a, b),
        if p.concurrent {
            consistent(b, a)
        } else {
            Some(true)
        },
    ];
    if verdicts.contains(&Some(false)) {
        Pair::Violation(format!(
            "user {}, {}: {} and {}",
            p.user_id,
            if p.concurrent {
                "concurrent"
            } else {
                "one after the other"
            },
            a.0.label(),
            b.0.label()
        ))
    } else if verdicts.contains(&None) {
        Pair::Inconclusive
    } else if a.0 == Outcome::Accepted && b.0 == Outcome::Accepted {
        Pair::Replayed
    } else if a.0 == Outcome::InProgress || b.0 == Outcome::InProgress {
        Pair::InProgress
    } else {
        Pair::Consistent
    }
}

/// Given that `x` was accepted, is `y` consistent with one side effect?
/// `None` when `y` cannot tell.
fn consistent(x: (Outcome, Option<Uuid>), y: (Outcome, Option<Uuid>)) -> Option<bool> {
    if x.0 != Outcome::Accepted {
        return Some(true);
    }
    match y.0 {
        Outcome::Accepted => Some(y.1 == x.1),
        Outcome::InProgress => Some(true),
        o if is_transient(o) => None,
        _ => Some(false),
    }
}
