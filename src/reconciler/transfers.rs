//! One event's stock transfers between its buckets: those a crash (or a
//! failure between two Redis calls) left after their first step are
//! finished, exactly once.
//!
//! A transfer's record stays in its source bucket until the target has its
//! id ([`crate::redis::transfer`]). A record older than the grace period is
//! no engine between two steps: if the target has the id, only the record
//! goes; if not, the units land now (`transfer.lua` "in", once per id) and
//! then the record goes. A target that is not loaded (lost, being rebuilt)
//! keeps the record for a later pass: its rebuild counted the units in
//! flight. Finishing, never undoing: the units are already out of the
//! source's stock and total, so landing them is the one step that neither
//! loses nor creates a unit.

use chrono::Utc;

use super::{Discrepancy, ReconcileError, Reconciler, Report};
use crate::{db::events::Event, loading};

impl Reconciler {
    pub(super) async fn finish_transfers(
        &self,
        event: &Event,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        if loading::bucket_count(event) == 1 {
            return Ok(());
        }
        let grace_ms = self.settings.grace.as_millis() as i64;
        let now_ms = Utc::now().timestamp_millis();
        let mut landed_any = false;
        for source in loading::buckets(event) {
            for transfer in self.redis.pending_transfers(source).await? {
                let started_ms = transfer
                    .id
                    .get_timestamp()
                    .map(|t| {
                        let (secs, nanos) = t.to_unix();
                        secs as i64 * 1_000 + nanos as i64 / 1_000_000
                    })
                    .unwrap_or(0);
                if now_ms - started_ms < grace_ms {
                    continue;
                }
                let after = if self.redis.transfer_arrived(&transfer).await? {
                    "had landed; record dropped"
                } else if self.redis.transfer_in(&transfer).await? {
                    landed_any = true;
                    "landed now; record dropped"
                } else {
                    continue;
                };
                self.redis.transfer_done(&transfer).await?;
                report.repairs += 1;
                report.discrepancies.push(Discrepancy {
                    event_id: event.id,
                    kind: "transfer_unfinished",
                    subject: Some(transfer.id.to_string()),
                    before: format!(
                        "{} units in flight from bucket {} to bucket {}",
                        transfer.units, transfer.source.index, transfer.target.index
                    ),
                    after: after.into(),
                    repaired: true,
                });
            }
        }
        if landed_any {
            self.redis.publish_stock_back(event.id).await?;
        }
        Ok(())
    }
}
