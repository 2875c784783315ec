//! A writer's check, just before it persists a batch, that Redis still
//! accounts for every intent in it: `missing.lua` finds the intents no longer
//! pending in the ledger (normally none), and only those go through
//! `admit.lua`, which takes their stock again or refuses them.

use fred::types::Value;
use uuid::Uuid;

use super::{keys::Bucket, Redis, RedisError};
use crate::intent::Intent;

/// What `admit.lua` said of a batch.
#[derive(Debug)]
pub enum Admission {
    /// The event is not in Redis (lost and not rebuilt yet): wait.
    NotLoaded,
    /// Per order_no: 1 pending, 2 re-taken after a loss, 0 refused.
    Decided(Vec<(Uuid, i64)>),
}

impl Redis {
    /// Runs `missing.lua`: the intents (of one event) no longer pending in its ledger.
    pub async fn missing_from_ledger(
        &self,
        bucket: impl Into<Bucket>,
        intents: &[Intent],
    ) -> Result<Vec<Intent>, RedisError> {
        let bucket: Bucket = bucket.into();
        let parts = Self::in_parts(intents, |part| async move {
            let args = part
                .iter()
                .map(|i| Value::from(i.order_no.to_string()))
                .collect();
            let reply = self
                .run(
                    &self.scripts.missing,
                    vec![self.keys.event(bucket).ledger],
                    args,
                )
                .await?;
            let Value::Array(positions) = reply else {
                return Err(RedisError::Protocol(format!(
                    "missing.lua returned {reply:?}"
                )));
            };
            Ok(positions
                .iter()
                .filter_map(Value::as_i64)
                .filter_map(|p| part.get((p - 1) as usize).copied())
                .collect::<Vec<Intent>>())
        })
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Runs `admit.lua` for intents of one event: which may be persisted as
    /// they are, and which lost their stock with a Redis restart.
    pub async fn admit(
        &self,
        bucket: impl Into<Bucket>,
        intents: &[Intent],
    ) -> Result<Admission, RedisError> {
        let bucket: Bucket = bucket.into();
        let parts = Self::in_parts(intents, |part| self.admit_part(bucket, part)).await?;
        let mut decided = Vec::with_capacity(intents.len());
        for part in parts {
            match part {
                // Lost between two parts: the whole batch waits for the
                // rebuild; what a part re-took is pending and admitted again.
                Admission::NotLoaded => return Ok(Admission::NotLoaded),
                Admission::Decided(states) => decided.extend(states),
            }
        }
        Ok(Admission::Decided(decided))
    }

    async fn admit_part(
        &self,
        bucket: impl Into<Bucket>,
        intents: &[Intent],
    ) -> Result<Admission, RedisError> {
        let bucket: Bucket = bucket.into();
        let mut args = Vec::with_capacity(intents.len() * 5);
        for i in intents {
            args.extend([
                Value::from(i.order_no.to_string()),
                Value::from(i.user_id),
                Value::from(i.quantity as i64),
                Value::from(i.amount),
                Value::from(i.accepted_at.timestamp_millis()),
            ]);
        }
        match self
            .run(&self.scripts.admit, self.keys.event(bucket).all(), args)
            .await?
        {
            Value::Integer(-1) => Ok(Admission::NotLoaded),
            Value::Array(states) if states.len() == intents.len() => Ok(Admission::Decided(
                intents
                    .iter()
                    .zip(states)
                    .map(|(i, s)| (i.order_no, s.as_i64().unwrap_or(1)))
                    .collect(),
            )),
            other => Err(RedisError::Protocol(format!(
                "admit.lua returned {other:?}"
            ))),
        }
    }
}
