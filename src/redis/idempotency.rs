//! `idempotency.lua`: a shopper's Idempotency-Key record, claimed and written
//! in single atomic steps (see [`crate::idempotency`] for how it is used).

use fred::types::Value;
use uuid::Uuid;

use super::{Redis, RedisError};

/// What `idempotency.lua` found for a key (see its header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// No record before this call: go ahead with the candidate order_no.
    New(Uuid),
    /// An attempt with this order_no ended without an answer: resume it.
    Resume(Uuid),
    /// Answered before: replay.
    Done {
        status: u16,
        body: String,
    },
    InProgress,
    /// The key was used for another request.
    Mismatch,
}

/// The state an Idempotency-Key record is written in.
#[derive(Clone, Copy, Debug)]
pub enum KeyState<'a> {
    InFlight,
    /// Ended without an answer: the next retry resumes it.
    Retry,
    /// Answered: replay `status` and `body`.
    Done {
        status: u16,
        body: &'a str,
    },
}

impl Redis {
    /// Claims a shopper's key for `candidate`, unless a record says otherwise.
    pub async fn claim_key(
        &self,
        user_id: i64,
        key: &str,
        fingerprint: &str,
        candidate: Uuid,
        ttl_ms: i64,
        stale_ms: i64,
    ) -> Result<KeyClaim, RedisError> {
        let reply = self
            .run(
                &self.scripts.idempotency,
                vec![self.keys.idempotency(user_id, key)],
                vec![
                    Value::from("claim"),
                    Value::from(fingerprint),
                    Value::from(candidate.to_string()),
                    Value::from(ttl_ms.max(1)),
                    Value::from(stale_ms),
                ],
            )
            .await?;
        KeyClaim::decode(reply)
    }

    /// Overwrites a shopper's key record.
    pub async fn put_key(
        &self,
        user_id: i64,
        key: &str,
        fingerprint: &str,
        order_no: Uuid,
        ttl_ms: i64,
        state: KeyState<'_>,
    ) -> Result<(), RedisError> {
        let mut args = vec![
            Value::from("put"),
            Value::from(fingerprint),
            Value::from(order_no.to_string()),
            Value::from(ttl_ms.max(1)),
        ];
        match state {
            KeyState::InFlight => args.push(Value::from("in_flight")),
            KeyState::Retry => args.push(Value::from("retry")),
            KeyState::Done { status, body } => args.extend([
                Value::from("done"),
                Value::from(status as i64),
                Value::from(body),
            ]),
        }
        self.run_for_int(
            &self.scripts.idempotency,
            vec![self.keys.idempotency(user_id, key)],
            args,
        )
        .await?;
        Ok(())
    }
}

impl KeyClaim {
    fn decode(reply: Value) -> Result<Self, RedisError> {
        let bad =
            |reply: &Value| RedisError::Protocol(format!("idempotency.lua returned {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad(&reply));
        };
        let text = |i: usize| items.get(i).and_then(Value::as_string);
        let uuid = |i: usize| text(i).and_then(|s| s.parse::<Uuid>().ok());
        Ok(match items.first().and_then(Value::as_i64) {
            Some(1) => Self::New(uuid(1).ok_or_else(|| bad(&reply))?),
            Some(2) => Self::Resume(uuid(1).ok_or_else(|| bad(&reply))?),
            Some(3) => Self::Done {
                status: text(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&reply))?,
                body: text(2).ok_or_else(|| bad(&reply))?,
            },
            Some(4) => Self::InProgress,
            Some(5) => Self::Mismatch,
            _ => return Err(bad(&reply)),
        })
    }
}
