//! `transfer.lua`: stock moving between two buckets of one event, each step
//! atomic on one bucket and applied at most once (see the script's header).
//! [`Redis::move_stock`] runs the three steps in order; the reconciler
//! finishes what a crash left after the first ([`Redis::pending_transfers`],
//! [`Redis::transfer_arrived`]).

use fred::{prelude::*, types::Value};
use uuid::Uuid;

use super::{keys::Bucket, Redis, RedisError};

/// Most units one transfer moves beyond what the purchase needs: small
/// moves keep a bucket's own shoppers served and few units in flight (a
/// failover can lose a step of one), at a few more transfers at the end
/// of a sale.
pub const TRANSFER_AT_MOST: i64 = 16;

/// A transfer the source bucket recorded and has not seen confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingTransfer {
    pub id: Uuid,
    pub source: Bucket,
    pub target: Bucket,
    pub units: i64,
}

impl Redis {
    fn transfer_keys(&self, at: Bucket) -> Vec<String> {
        let k = self.keys.event(at);
        vec![k.meta, k.stock, k.transfers_out, k.transfers_in]
    }

    /// Step 1 on `source`: takes half its stock (at least `at_least`, else
    /// at most [`TRANSFER_AT_MOST`], never more than all) into a transfer
    /// to `target`. Returns the units moved (0:
    /// it had none; -1: it is not loaded, lost or being rebuilt).
    pub async fn transfer_out(
        &self,
        id: Uuid,
        source: Bucket,
        target: Bucket,
        at_least: i64,
    ) -> Result<i64, RedisError> {
        self.run_for_int(
            &self.scripts.transfer,
            self.transfer_keys(source),
            vec![
                Value::from("out"),
                Value::from(id.to_string()),
                Value::from(target.index as i64),
                Value::from(at_least),
                Value::from(TRANSFER_AT_MOST),
            ],
        )
        .await
    }

    /// Step 2 on the target: the units join its stock, once per id.
    /// `Ok(false)` when the target is not loaded (nothing written).
    pub async fn transfer_in(&self, transfer: &PendingTransfer) -> Result<bool, RedisError> {
        let applied = self
            .run_for_int(
                &self.scripts.transfer,
                self.transfer_keys(transfer.target),
                vec![
                    Value::from("in"),
                    Value::from(transfer.id.to_string()),
                    Value::from(transfer.source.index as i64),
                    Value::from(transfer.units),
                ],
            )
            .await?;
        Ok(applied != 0)
    }

    /// Step 3 on the source: the record goes once the target has the id.
    pub async fn transfer_done(&self, transfer: &PendingTransfer) -> Result<bool, RedisError> {
        Ok(self
            .run_for_int(
                &self.scripts.transfer,
                self.transfer_keys(transfer.source),
                vec![Value::from("done"), Value::from(transfer.id.to_string())],
            )
            .await?
            == 1)
    }

    /// The three steps: units from `source` into `target`'s stock. Returns
    /// the units that arrived (0: the source had none; `None`: the source
    /// is not loaded, so whether it has any is not known). A failure after
    /// the first step leaves a record the reconciler finishes.
    pub async fn move_stock(
        &self,
        source: Bucket,
        target: Bucket,
        at_least: i64,
    ) -> Result<Option<i64>, RedisError> {
        let id = Uuid::now_v7();
        let units = self.transfer_out(id, source, target, at_least).await?;
        if units <= 0 {
            return Ok((units == 0).then_some(0));
        }
        metrics::counter!("seckill_bucket_transfers_total").increment(1);
        let transfer = PendingTransfer {
            id,
            source,
            target,
            units,
        };
        if !self.transfer_in(&transfer).await? {
            // The target was lost meanwhile: the record stays, and the
            // rebuild counts it in flight; the reconciler lands it after.
            return Ok(Some(0));
        }
        self.transfer_done(&transfer).await?;
        Ok(Some(units))
    }

    /// The source bucket's unconfirmed transfers (a few at most: each is
    /// confirmed right after it lands).
    pub async fn pending_transfers(
        &self,
        source: Bucket,
    ) -> Result<Vec<PendingTransfer>, RedisError> {
        let raw: std::collections::HashMap<String, String> = self
            .client()
            .hgetall(self.keys.event(source).transfers_out)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, record)| {
                let (target, units) = record.split_once(':')?;
                let target: u16 = target.parse().ok()?;
                (target < source.of).then_some(())?;
                Some(PendingTransfer {
                    id: id.parse().ok()?,
                    source,
                    target: Bucket::new(source.event_id, target, source.of),
                    units: units.parse().ok()?,
                })
            })
            .collect())
    }

    /// A bucket's counters with `in_flight` counting only the units that
    /// have not landed: between a transfer's landing and its record's
    /// removal (a moment, or until the reconciler after a crash) the units
    /// are already in the target's stock and total.
    pub async fn bucket_state(&self, bucket: Bucket) -> Result<super::SaleState, RedisError> {
        let mut state = self.sale_state(bucket).await?;
        if state.in_flight != 0 {
            state.in_flight = self.unlanded_units(bucket).await?;
        }
        Ok(state)
    }

    /// Each bucket's [`Self::bucket_state`] as at one instant: the buckets
    /// are read until two reads in a row see the same `transfer_seq` on
    /// every bucket, so no transfer step ran between them (a unit moved from
    /// a bucket not yet read into one already read would be missed by a
    /// single read). At most `reads` reads; `None` when transfers kept
    /// crossing them.
    pub async fn bucket_states_between_transfers(
        &self,
        buckets: &[Bucket],
        reads: usize,
    ) -> Result<Option<Vec<super::SaleState>>, RedisError> {
        let mut seen: Option<Vec<super::SaleState>> = None;
        for _ in 0..reads {
            let mut states = Vec::with_capacity(buckets.len());
            for &bucket in buckets {
                states.push(self.bucket_state(bucket).await?);
            }
            let same_steps = seen.as_ref().is_some_and(|before| {
                before
                    .iter()
                    .map(|s| s.transfer_seq)
                    .eq(states.iter().map(|s| s.transfer_seq))
            });
            if same_steps {
                return Ok(Some(states));
            }
            seen = Some(states);
        }
        Ok(None)
    }

    /// Units of the bucket's transfer records whose target has not got them.
    pub async fn unlanded_units(&self, bucket: Bucket) -> Result<i64, RedisError> {
        let mut units = 0;
        for transfer in self.pending_transfers(bucket).await? {
            if !self.transfer_arrived(&transfer).await? {
                units += transfer.units;
            }
        }
        Ok(units)
    }

    /// `balance.lua`: the bucket's stock set to its total less what its
    /// shoppers hold, if `seen` is still what Redis holds. Returns the stock
    /// written (`None`: the state moved, nothing written).
    pub async fn balance_bucket(
        &self,
        bucket: Bucket,
        seen: &super::SaleState,
    ) -> Result<Option<i64>, RedisError> {
        self.balance(bucket, seen, None).await
    }

    /// `balance.lua` with a corrected total: only the bucket's total is
    /// written, if `seen` is still what Redis holds.
    pub async fn set_bucket_total(
        &self,
        bucket: Bucket,
        seen: &super::SaleState,
        total: i64,
    ) -> Result<bool, RedisError> {
        Ok(self.balance(bucket, seen, Some(total)).await?.is_some())
    }

    async fn balance(
        &self,
        bucket: Bucket,
        seen: &super::SaleState,
        total: Option<i64>,
    ) -> Result<Option<i64>, RedisError> {
        let (Some(stock), Some(held)) = (seen.stock_left, seen.held) else {
            return Ok(None);
        };
        let k = self.keys.event(bucket);
        let mut args = vec![
            Value::from(stock),
            Value::from(held),
            Value::from(seen.pending_units),
            Value::from(seen.total),
        ];
        args.extend(total.map(Value::from));
        let written = self
            .run_for_int(&self.scripts.balance, vec![k.meta, k.stock], args)
            .await?;
        Ok((written >= 0).then_some(written))
    }

    /// Drops a bucket's transfer records and received ids (its rebuild
    /// counts their units afresh).
    pub async fn forget_transfers(&self, bucket: Bucket) -> Result<(), RedisError> {
        let k = self.keys.event(bucket);
        let _: i64 = self
            .client()
            .unlink(vec![k.transfers_out, k.transfers_in])
            .await?;
        Ok(())
    }

    /// Whether the target has applied the transfer.
    pub async fn transfer_arrived(&self, transfer: &PendingTransfer) -> Result<bool, RedisError> {
        Ok(self
            .client()
            .sismember(
                self.keys.event(transfer.target).transfers_in,
                transfer.id.to_string(),
            )
            .await?)
    }
}
