//! After the crowd: check the sale. The engine's own invariant checker
//! (SPEC §5) is asked first; then the client-side truths that only the crowd
//! knows are checked against Postgres (read-only): every 202 persisted for
//! its shopper, no order the crowd was not given, idempotent retries,
//! per-user limits, conservation, money, and no undersell.
//!
//! Layout: `check` (the verdict's vocabulary), `answers` (checks of the
//! crowd's log alone), `orders` and `money` (against Postgres),
//! `order_route` (the shopper's order route).

mod answers;
mod check;
mod money;
mod order_route;
mod orders;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

pub use self::check::{Check, Setup, Verdict};
use self::{
    answers::{answers_check, idempotency_check},
    money::money_check,
    order_route::order_api_check,
    orders::Acked,
};
use crate::{
    api::{Api, Signer},
    crowd::CrowdLog,
    drain::Drain,
};

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
    checks.extend(engine_checks(api, setup.event_id).await);
    checks.push(answers_check(log));
    match client_checks(setup, log, drain).await {
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

/// The engine's invariant checker, one line per check it reports.
async fn engine_checks(api: &Api, event_id: i64) -> Vec<Check> {
    const NAME: &str = "engine invariants";
    match api.invariants(event_id).await {
        Ok(Some(inv)) if inv.checks.is_empty() => vec![Check::new(
            NAME,
            "engine",
            inv.ok,
            "no individual checks reported".into(),
        )],
        Ok(Some(inv)) => inv
            .checks
            .iter()
            .map(|c| Check::new(&c.name, "engine", c.ok, c.detail.clone()))
            .collect(),
        Ok(None) => vec![Check::skip(
            NAME,
            "engine",
            "this engine has no GET /admin/events/{id}/invariants; client checks only".into(),
        )],
        Err(err) => vec![Check::new(NAME, "engine", false, format!("{err:#}"))],
    }
}

/// The checks against Postgres, and the idempotency check in its place
/// among them.
async fn client_checks(
    setup: &Setup<'_>,
    log: &CrowdLog,
    drain: &Drain,
) -> anyhow::Result<Vec<Check>> {
    let plan = setup.plan;
    let event = &drain.event;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&plan.database_url)
        .await
        .context("connecting to Postgres (--database-url) for verification")?;
    let rows = orders::read(&pool, setup.event_id).await?;
    let acked = Acked::new(log, &rows);
    let (unacknowledged, explained) = orders::unacknowledged_check(&acked, &rows, log);
    let mut checks = vec![
        orders::persisted_check(&acked),
        unacknowledged,
        orders::count_check(&acked, &rows, &explained),
        idempotency_check(log),
        orders::per_user_check(&rows, plan.knobs.per_user_limit),
        orders::conservation_check(&rows, event),
        money_check(&pool, setup, &rows).await?,
        orders::undersell_check(plan, log, event),
    ];
    if plan.knobs.cancel_share > 0.0 {
        let (refund_rows,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM refunds WHERE event_id = $1")
                .bind(setup.event_id)
                .fetch_one(&pool)
                .await
                .context("SELECT count(*) FROM refunds")?;
        checks.push(orders::refunds_check(
            &acked,
            &rows,
            refund_rows,
            log,
            event,
        ));
    }
    pool.close().await;
    Ok(checks)
}
