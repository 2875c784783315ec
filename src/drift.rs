//! What Redis should hold for an event, from Postgres truth and the intents
//! still pending in the ledger, and how far it is from that: read by the
//! reconciler (to repair) and the invariant checker (to report).

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db::{self, events::Event, DbError},
    intent::from_millis,
    redis::Snapshot,
};

/// What Redis should hold, from Postgres truth plus pending intents.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub stock_left: i64,
    pub bought: HashMap<i64, i64>,
}

/// Postgres orders accepted no later than the snapshot, merged with the
/// snapshot's pending intents (a pending intent holds its stock even if
/// Postgres already marked it failed: its release has not run yet).
pub async fn expected_state(
    db: &PgPool,
    event: &Event,
    snapshot: &Snapshot,
) -> Result<Expected, DbError> {
    let rows = db::orders::of_event(db, event.id, Some(from_millis(snapshot.at_ms))).await?;
    let pending: HashSet<Uuid> = snapshot.ledger.iter().map(|(o, _)| *o).collect();
    let mut bought: HashMap<i64, i64> = HashMap::new();
    let mut taken = 0i64;
    for row in rows {
        if !row.failed && !pending.contains(&row.order_no) {
            *bought.entry(row.user_id).or_default() += row.quantity as i64;
            taken += row.quantity as i64;
        }
    }
    for (_, entry) in &snapshot.ledger {
        *bought.entry(entry.user_id).or_default() += entry.quantity as i64;
        taken += entry.quantity as i64;
    }
    Ok(Expected {
        stock_left: event.stock_total - taken,
        bought,
    })
}

/// The differences between Redis and what it should hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Drift {
    /// (in Redis, expected)
    pub stock: Option<(i64, i64)>,
    /// (user, in Redis, expected), by user
    pub buyers: Vec<(i64, i64, i64)>,
}

impl Drift {
    pub fn is_none(&self) -> bool {
        self.stock.is_none() && self.buyers.is_empty()
    }
}

pub fn drift(snapshot: &Snapshot, expected: &Expected) -> Drift {
    let stock = snapshot.stock_left.unwrap_or(-1);
    let stock_drift = (stock != expected.stock_left).then_some((stock, expected.stock_left));
    let mut users: HashSet<i64> = snapshot.bought.keys().copied().collect();
    users.extend(expected.bought.keys().copied());
    let mut buyers: Vec<(i64, i64, i64)> = users
        .into_iter()
        .filter_map(|u| {
            let (have, want) = (
                snapshot.bought.get(&u).copied().unwrap_or(0),
                expected.bought.get(&u).copied().unwrap_or(0),
            );
            (have != want).then_some((u, have, want))
        })
        .collect();
    buyers.sort_unstable();
    Drift {
        stock: stock_drift,
        buyers,
    }
}
