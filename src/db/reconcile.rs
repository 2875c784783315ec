//! `reconcile_runs` and `reconcile_discrepancies`: one row per reconciler
//! pass, one per discrepancy it found (repaired or not).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::DbError;

/// One finding of a pass.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Discrepancy {
    pub event_id: i64,
    pub kind: &'static str,
    pub subject: Option<String>,
    pub before: String,
    pub after: String,
    pub repaired: bool,
}

/// The figures of one pass.
pub struct Run<'a> {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub holder: &'a str,
    pub events_checked: usize,
    pub intents_replayed: usize,
    pub intents_acked: usize,
    pub repairs: usize,
}

/// Records a pass and its discrepancies in one transaction; returns the run id.
pub async fn record(
    db: &PgPool,
    run: &Run<'_>,
    discrepancies: &[Discrepancy],
) -> Result<i64, DbError> {
    let mut tx = db.begin().await?;
    let (run_id,): (i64,) = sqlx::query_as(
        "INSERT INTO reconcile_runs (started_at, finished_at, holder, events_checked, intents_replayed, intents_acked, repairs, discrepancies)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(run.started_at)
    .bind(run.finished_at)
    .bind(run.holder)
    .bind(run.events_checked as i32)
    .bind(run.intents_replayed as i32)
    .bind(run.intents_acked as i32)
    .bind(run.repairs as i32)
    .bind(discrepancies.len() as i32)
    .fetch_one(&mut *tx)
    .await?;
    if !discrepancies.is_empty() {
        let d = discrepancies;
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
