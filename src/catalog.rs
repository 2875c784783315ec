//! The process-local view of events: their immutable sale parameters, cached
//! after the first read, and a per-event "sold out" flag so that once Redis
//! has said sold out, the purchase path answers 409 without a Redis trip.
//!
//! The flag is cleared when stock comes back: by a `stock-back` message on
//! Redis pub/sub (published by whichever process released stock or preheated),
//! and, in case a message is missed, by a periodic re-check of flagged events.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use sqlx::PgPool;

use crate::db::{self, events::Event, DbError};

/// One cached event and its local sold-out flag.
pub struct EventSlot {
    pub event: Event,
    sold_out: AtomicBool,
}

impl EventSlot {
    pub fn is_sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Acquire)
    }

    pub fn mark_sold_out(&self) {
        self.sold_out.store(true, Ordering::Release);
    }

    pub fn starts_ms(&self) -> i64 {
        self.event.starts_at.timestamp_millis()
    }

    pub fn ends_ms(&self) -> i64 {
        self.event.ends_at.timestamp_millis()
    }

    /// Past `ends_at` by the local clock.
    pub fn has_ended(&self) -> bool {
        Utc::now() >= self.event.ends_at
    }
}

enum Entry {
    Known(Arc<EventSlot>),
    /// Unknown id, remembered briefly so random ids cannot hammer Postgres.
    Missing(Instant),
}

/// Event cache shared by every request of the process.
#[derive(Default)]
pub struct Catalog {
    entries: RwLock<HashMap<i64, Entry>>,
}

const MISSING_TTL: Duration = Duration::from_secs(1);

impl Catalog {
    /// The event, from cache or Postgres; `None` when it does not exist.
    pub async fn get(&self, db: &PgPool, id: i64) -> Result<Option<Arc<EventSlot>>, DbError> {
        {
            let entries = self.entries.read().expect("catalog lock poisoned");
            match entries.get(&id) {
                Some(Entry::Known(slot)) => return Ok(Some(slot.clone())),
                Some(Entry::Missing(at)) if at.elapsed() < MISSING_TTL => return Ok(None),
                _ => {}
            }
        }
        let found = db::events::get(db, id).await?;
        let mut entries = self.entries.write().expect("catalog lock poisoned");
        Ok(match found {
            Some(event) => {
                let slot = match entries.get(&id) {
                    Some(Entry::Known(slot)) => slot.clone(),
                    _ => Arc::new(EventSlot {
                        event,
                        sold_out: AtomicBool::new(false),
                    }),
                };
                entries.insert(id, Entry::Known(slot.clone()));
                Some(slot)
            }
            None => {
                entries.insert(id, Entry::Missing(Instant::now()));
                None
            }
        })
    }

    /// Forget a negative entry (the event was just created).
    pub fn forget(&self, id: i64) {
        let mut entries = self.entries.write().expect("catalog lock poisoned");
        if matches!(entries.get(&id), Some(Entry::Missing(_))) {
            entries.remove(&id);
        }
    }

    /// Stock came back for this event: let purchases reach Redis again.
    pub fn clear_sold_out(&self, id: i64) {
        if let Some(Entry::Known(slot)) =
            self.entries.read().expect("catalog lock poisoned").get(&id)
        {
            slot.sold_out.store(false, Ordering::Release);
        }
    }

    /// Ids of events flagged sold out here.
    pub fn sold_out_ids(&self) -> Vec<i64> {
        self.entries
            .read()
            .expect("catalog lock poisoned")
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Known(slot) if slot.is_sold_out() => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Drops negative entries that have expired, so the map stays small.
    pub fn prune(&self) {
        self.entries
            .write()
            .expect("catalog lock poisoned")
            .retain(|_, e| match e {
                Entry::Known(_) => true,
                Entry::Missing(at) => at.elapsed() < MISSING_TTL,
            });
    }
}
