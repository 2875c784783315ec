//! The shopper's order route, sampled: each acknowledged order is visible to
//! its owner, settled after the drain, and hidden from every other shopper.

use std::collections::HashSet;

use super::check::{sample_list, Check, Setup};
use crate::{
    api::{Api, Signer},
    crowd::CrowdLog,
};

/// The order route shows each sampled 202 to its owner and to nobody else.
pub(super) async fn order_api_check(
    api: &Api,
    signer: &Signer,
    setup: &Setup<'_>,
    log: &CrowdLog,
) -> Check {
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
                // Settled: confirmed or failed, or since cancelled/refunded.
                if !matches!(
                    o.status.as_str(),
                    "confirmed" | "failed" | "cancelled" | "refunded"
                ) {
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
