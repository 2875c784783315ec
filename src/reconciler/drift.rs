//! One event's reconciliation, the state half: Redis's stock and buyer
//! counts against Postgres truth ([`crate::drift`]), in bounded steps.
//!
//! Every pass compares the aggregates (O(1) in Redis plus the ledger in
//! flight). A difference seen twice, identical, 150 ms apart is no passing
//! purchase: then every buyer of the event is compared, a page at a time,
//! and corrected with `repair.lua` (which writes only if what it corrects is
//! still as observed), then the stock. Besides, each pass compares one page
//! of buyers, so a drift the aggregates cannot show (units moved between
//! buyers) is found in time too.

use super::{Discrepancy, ReconcileError, Reconciler, Report, CONFIRM_AFTER};
use crate::{
    db::{self, events::Event},
    drift::{buyer_drift, Observation},
    loading,
    redis::{state::PAGE, Bucket, MOST_PER_CALL},
};

/// Where the background sweep of an event's buyers stands.
#[derive(Clone, Debug, Default)]
pub(super) struct SweepCursor {
    /// HSCAN cursor over Redis's buyers ("0": start over).
    redis: String,
    /// Last user id of Postgres's buyers seen.
    postgres: i64,
}

impl Reconciler {
    /// Repairs drift seen twice in a row, with compare-then-write scripts.
    pub(super) async fn repair_drift(
        &self,
        event: &Event,
        first: Observation,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let seen = first.drift();
        if seen.is_none() {
            return Ok(());
        }
        tokio::time::sleep(CONFIRM_AFTER).await;
        let second = Observation::take(&self.db, &self.redis, event).await?;
        if second.drift() != seen || second.state.stock_left != first.state.stock_left {
            // Moving state (a sale in full swing): look again next pass.
            return Ok(());
        }
        // A stable difference: find the buyers, then set the stock.
        for bucket in loading::buckets(event) {
            let mut cursor = SweepCursor::default();
            while !self.sweep_page(event, bucket, &mut cursor, report).await? {}
        }
        if loading::bucket_count(event) > 1 {
            return self.repair_bucket_stocks(event, report).await;
        }
        let after = Observation::take(&self.db, &self.redis, event).await?;
        let Some((before, _)) = after.drift().stock.or(after.drift().held) else {
            return Ok(());
        };
        if !after.totals_agree() {
            // A stock adjustment in flight (or left pending by a crash, which
            // the next pass settles): the expected stock is not known yet.
            return Ok(());
        }
        let expected = after.expected_stock();
        // More sold than stocked can only be stopped, not undone here: sell no more.
        let target = expected.max(0);
        let repaired = self
            .redis
            .repair_stock(
                event.id,
                after.state.stock_left,
                after.state.pending_units,
                target,
                after.expected_held(),
            )
            .await?;
        if repaired {
            report.repairs += 1;
            if target > after.state.stock_left.unwrap_or(0) {
                self.redis.publish_stock_back(event.id).await?;
            }
        }
        report.discrepancies.push(Discrepancy {
            event_id: event.id,
            kind: if expected < 0 {
                "oversold"
            } else {
                "stock_drift"
            },
            subject: None,
            before: after.state.stock_left.unwrap_or(before).to_string(),
            after: if expected < 0 {
                format!("0 (oversold by {})", -expected)
            } else {
                target.to_string()
            },
            repaired,
        });
        Ok(())
    }

    /// An event of several buckets, once its buyers are repaired: each
    /// bucket's stock is its total less what its shoppers hold (both kept
    /// by the scripts in the same steps; `balance.lua` writes only if the
    /// stock and the counters are still as read). The totals themselves are
    /// settled every pass ([`Self::settle_bucket_totals`]).
    async fn repair_bucket_stocks(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        for bucket in loading::buckets(event) {
            let state = self.redis.sale_state(bucket).await?;
            let (Some(held), Some(stock)) = (state.held, state.stock_left) else {
                continue;
            };
            let target = (state.total - held).max(0);
            if stock == target {
                continue;
            }
            let written = self.redis.balance_bucket(bucket, &state).await?;
            if written.is_some() {
                report.repairs += 1;
                if target > stock {
                    self.redis.publish_stock_back(event.id).await?;
                }
            }
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "bucket_stock_drift",
                subject: Some(format!("bucket {}", bucket.index)),
                before: stock.to_string(),
                after: target.to_string(),
                repaired: written.is_some(),
            });
        }
        Ok(())
    }

    /// The buckets' totals and units in flight against Postgres's
    /// `stock_total` ([`loading::settle_bucket_totals`]).
    pub(super) async fn settle_bucket_totals(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let Some(settled) = loading::settle_bucket_totals(&self.db, &self.redis, event).await?
        else {
            return Ok(());
        };
        if settled.rebalanced > 0 {
            report.repairs += 1;
            report.discrepancies.push(Discrepancy {
                event_id: event.id,
                kind: "bucket_balance_drift",
                subject: None,
                before: "buckets' stock and units off their totals, in opposite directions".into(),
                after: format!(
                    "{} units of total moved to where the units are",
                    settled.rebalanced
                ),
                repaired: true,
            });
        }
        if settled.applied == 0 && settled.accounted == settled.stock_total {
            return Ok(());
        }
        let repaired = settled.accounted + settled.applied == settled.stock_total;
        if settled.applied != 0 {
            report.repairs += 1;
            if settled.applied > 0 {
                self.redis.publish_stock_back(event.id).await?;
            }
        }
        report.discrepancies.push(Discrepancy {
            event_id: event.id,
            kind: "bucket_totals_drift",
            subject: None,
            before: format!("buckets account for {} units", settled.accounted),
            after: format!(
                "stock_total {} ({:+} applied)",
                settled.stock_total, settled.applied
            ),
            repaired,
        });
        Ok(())
    }

    /// Each pass, one page of buyers (Redis's and Postgres's) of each bucket
    /// compared and repaired, the cursors kept for the next pass.
    pub(super) async fn sweep_some_buyers(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        for bucket in loading::buckets(event) {
            let mut cursor = self
                .sweeps
                .lock()
                .expect("sweep cursors")
                .get(&bucket)
                .cloned()
                .unwrap_or_default();
            let _ = self.sweep_page(event, bucket, &mut cursor, report).await?;
            self.sweeps
                .lock()
                .expect("sweep cursors")
                .insert(bucket, cursor);
        }
        Ok(())
    }

    /// Compares and repairs one page of Redis's buyers and one of Postgres's;
    /// true once both walks are over (the cursor starts over).
    async fn sweep_page(
        &self,
        event: &Event,
        bucket: Bucket,
        cursor: &mut SweepCursor,
        report: &mut Report,
    ) -> Result<bool, ReconcileError> {
        let start = if cursor.redis.is_empty() {
            "0"
        } else {
            cursor.redis.as_str()
        };
        let (next, from_redis) = self.redis.buyers_page(bucket, start).await?;
        let from_postgres =
            db::orders::buyers_after(&self.db, bucket, cursor.postgres, PAGE as i64).await?;
        self.compare_buyers(event, bucket, &from_redis, report)
            .await?;
        self.compare_buyers(event, bucket, &from_postgres, report)
            .await?;
        let redis_done = next == "0";
        let postgres_done = from_postgres.len() < PAGE as usize;
        cursor.redis = if redis_done { String::new() } else { next };
        cursor.postgres = from_postgres.last().copied().unwrap_or(cursor.postgres);
        if redis_done && postgres_done {
            *cursor = SweepCursor::default();
            return Ok(true);
        }
        Ok(false)
    }

    async fn compare_buyers(
        &self,
        event: &Event,
        bucket: Bucket,
        users: &[i64],
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        for part in users.chunks(MOST_PER_CALL) {
            self.compare_some_buyers(event, bucket, part, report)
                .await?;
        }
        Ok(())
    }

    /// One `buyers.lua` read (one instant) and its comparison.
    async fn compare_some_buyers(
        &self,
        event: &Event,
        bucket: Bucket,
        users: &[i64],
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let (at_ms, buyers) = self.redis.buyers_at(bucket, users).await?;
        let drift = buyer_drift(&self.db, event.id, at_ms, &buyers).await?;
        if drift.is_empty() {
            return Ok(());
        }
        let repaired = self.redis.repair_buyers(bucket, &drift).await?;
        if repaired {
            report.repairs += 1;
        }
        for (user, before, after) in drift {
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
}
