//! Corrections of an event's drifted state: `repair.lua` writes only if the
//! state is still exactly as observed; `cap.lua` lowers the stock to an upper
//! bound of the truth.

use fred::types::Value;

use super::{Redis, RedisError, Snapshot};

impl Redis {
    /// Runs `repair.lua`; true when the state was still as `observed` and got
    /// corrected. `buyers`: (user, units observed, units corrected).
    pub async fn repair(
        &self,
        event_id: i64,
        observed: &Snapshot,
        stock_left: i64,
        buyers: &[(i64, i64, i64)],
    ) -> Result<bool, RedisError> {
        let k = self.keys.event(event_id);
        let mut args = vec![
            Value::from(observed.stock_left.unwrap_or(-1)),
            Value::from(stock_left),
            Value::from(observed.ledger.len() as i64),
        ];
        for (user, before, after) in buyers {
            args.extend([
                Value::from(*user),
                Value::from(*before),
                Value::from(*after),
            ]);
        }
        let repaired = self
            .run_for_int(
                &self.scripts.repair,
                vec![k.stock, k.bought, k.ledger],
                args,
            )
            .await?;
        Ok(repaired == 1)
    }

    /// Runs `cap.lua`: the event's stock lowered to at most `unsold`; returns
    /// the stock after (-1 when the event is not loaded).
    pub async fn cap_stock(&self, event_id: i64, unsold: i64) -> Result<i64, RedisError> {
        self.run_for_int(
            &self.scripts.cap,
            vec![self.keys.event(event_id).stock],
            vec![Value::from(unsold.max(0))],
        )
        .await
    }
}
