//! The process-local view of events, so that the crowd's requests touch
//! neither Postgres nor, mostly, Redis:
//!
//! - each event's sale parameters, read from Postgres once;
//! - a per-event "sold out" flag: once Redis has said sold out, the purchase
//!   path answers 409 without a Redis trip. It is cleared when stock comes
//!   back (a `stock-back` message on Redis pub/sub, and a periodic re-check
//!   of flagged events in case a message is missed);
//! - the stock left as Redis last said, refreshed every
//!   [`STOCK_REFRESH`] for the events someone looked at lately, for the
//!   public event page;
//! - an event's definition changed by an operator (edit, pause, end, stock):
//!   taken at once by the process that made the change, and by the others
//!   within [`DEFINITION_REFRESH`] (one query of the cached ids' versions).
//!   Nothing here can accept a purchase: only `purchase.lua` does, with the
//!   window and pause Redis holds, so a lagging copy only delays what the
//!   event page shows and lets a purchase reach Redis to be refused there;
//! - unknown ids: remembered briefly, ids above the highest event id are
//!   unknown without asking, and at most [`LOOKUPS_AT_ONCE`] lookups reach
//!   Postgres at a time, so a flood of random ids cannot starve the writers
//!   of connections.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::db::{self, events::Event, DbError};

/// How often the stock of recently viewed events is read from Redis.
pub const STOCK_REFRESH: Duration = Duration::from_millis(100);
/// An event not viewed for this long is no longer refreshed.
const VIEWED_WITHIN: Duration = Duration::from_secs(10);
/// How often the cached events' definitions are compared with Postgres.
pub const DEFINITION_REFRESH: Duration = Duration::from_secs(1);
/// Postgres lookups of events not in the cache, at most this many at once.
pub const LOOKUPS_AT_ONCE: usize = 2;
/// How long an unknown id is remembered as unknown.
const MISSING_TTL: Duration = Duration::from_secs(1);
/// `max_id_checked_ms` before the first read.
const NEVER: u64 = u64::MAX;
/// Shortest time between two reads of the highest event id on a miss.
const MAX_ID_RECHECK: Duration = Duration::from_millis(50);

/// No stock read yet (`stock` field).
const UNREAD: i64 = i64::MIN;
/// Not loaded into Redis (`stock` field).
const NOT_LOADED: i64 = i64::MIN + 1;
/// Never viewed (`viewed_ms`): not "viewed at the catalog's start", which
/// would count every event as recently viewed in a process's first seconds.
const NOT_VIEWED: u64 = u64::MAX;

/// One cached event, its local sold-out flag, its last-read stock and its
/// last rendered public page.
pub struct EventSlot {
    pub event: Event,
    /// The public page as last rendered, for the stock and status it shows:
    /// the crowd refreshing the page costs a clone, not a serialization.
    page: RwLock<Option<Arc<RenderedPage>>>,
    /// Shared by every definition of the event the catalog has held: a
    /// request still holding an older slot marks the current one sold out.
    live: Arc<LiveState>,
}

/// What the catalog learns of an event while it sells.
struct LiveState {
    sold_out: AtomicBool,
    stock: AtomicI64,
    /// Milliseconds since the catalog's start: when `stock` was read, and
    /// when the event was last viewed.
    stock_read_ms: AtomicU64,
    viewed_ms: AtomicU64,
}

impl EventSlot {
    fn new(event: Event) -> Self {
        Self {
            event,
            page: RwLock::new(None),
            live: Arc::new(LiveState {
                sold_out: AtomicBool::new(false),
                stock: AtomicI64::new(UNREAD),
                stock_read_ms: AtomicU64::new(0),
                viewed_ms: AtomicU64::new(NOT_VIEWED),
            }),
        }
    }

    /// The page last rendered, if it was rendered for this stock and status.
    pub fn rendered_page(&self, stock_left: i64, status: &str) -> Option<Arc<RenderedPage>> {
        self.page
            .read()
            .expect("page lock poisoned")
            .as_ref()
            .filter(|p| p.stock_left == stock_left && p.status == status)
            .cloned()
    }

    /// Keeps a page just rendered for the requests that follow.
    pub fn keep_page(&self, page: Arc<RenderedPage>) {
        *self.page.write().expect("page lock poisoned") = Some(page);
    }

    pub fn is_sold_out(&self) -> bool {
        self.live.sold_out.load(Ordering::Acquire)
    }

    pub fn mark_sold_out(&self) {
        self.live.sold_out.store(true, Ordering::Release);
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

/// An event's public page, serialized, with the figures it shows.
pub struct RenderedPage {
    pub stock_left: i64,
    pub status: &'static str,
    pub body: axum::body::Bytes,
    pub etag: axum::http::HeaderValue,
}

enum Entry {
    Known(Arc<EventSlot>),
    /// Unknown id, remembered briefly so random ids cannot hammer Postgres.
    Missing(Instant),
}

/// The stock of an event as the catalog last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenStock {
    /// Units left in Redis; `None` when the event is not loaded there.
    pub left: Option<i64>,
    /// How long ago Redis said so.
    pub age: Duration,
}

/// Event cache shared by every request of the process.
pub struct Catalog {
    entries: RwLock<HashMap<i64, Entry>>,
    /// The highest event id in Postgres, as of the last refresh, and when
    /// it was read (ms since `started`).
    max_id: AtomicI64,
    max_id_checked_ms: AtomicU64,
    /// Held while the highest id is read from Postgres.
    max_id_read: tokio::sync::Mutex<()>,
    lookups: Semaphore,
    started: Instant,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            max_id: AtomicI64::new(0),
            max_id_checked_ms: AtomicU64::new(NEVER),
            max_id_read: tokio::sync::Mutex::new(()),
            lookups: Semaphore::new(LOOKUPS_AT_ONCE),
            started: Instant::now(),
        }
    }
}

impl Catalog {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// What the cache alone knows: `Some(Some(slot))` a cached event,
    /// `Some(None)` an id recently found missing, `None` ask [`Catalog::get`].
    pub fn cached(&self, id: i64) -> Option<Option<Arc<EventSlot>>> {
        let entries = self.entries.read().expect("catalog lock poisoned");
        match entries.get(&id) {
            Some(Entry::Known(slot)) => Some(Some(slot.clone())),
            Some(Entry::Missing(at)) if at.elapsed() < MISSING_TTL => Some(None),
            _ => None,
        }
    }

    /// The event, from cache or Postgres; `None` when it does not exist.
    pub async fn get(&self, db: &PgPool, id: i64) -> Result<Option<Arc<EventSlot>>, DbError> {
        if let Some(known) = self.cached(id) {
            return Ok(known);
        }
        // Events get ids in order: one above the highest is no event, unless
        // it was created since the highest was read: read it again, at most
        // every MAX_ID_RECHECK (a flood of unknown ids costs that, no more).
        // One read at a time; who waited for it uses its answer if the read
        // began after they arrived.
        if id > self.max_id.load(Ordering::Acquire) {
            let arrived = self.now_ms();
            let _reading = self.max_id_read.lock().await;
            let checked = self.max_id_checked_ms.load(Ordering::Acquire);
            let fresh = checked != NEVER
                && (checked >= arrived
                    || self.now_ms().saturating_sub(checked) < MAX_ID_RECHECK.as_millis() as u64);
            if !fresh {
                let started = self.now_ms();
                self.max_id
                    .fetch_max(db::events::max_id(db).await?, Ordering::AcqRel);
                self.max_id_checked_ms.store(started, Ordering::Release);
            }
            if id > self.max_id.load(Ordering::Acquire) {
                return Ok(None);
            }
        }
        let _permit = self.lookups.acquire().await.expect("never closed");
        if let Some(Entry::Known(slot)) = self.entries.read().expect("catalog lock").get(&id) {
            return Ok(Some(slot.clone()));
        }
        let found = db::events::get(db, id).await?;
        let mut entries = self.entries.write().expect("catalog lock poisoned");
        Ok(match found {
            Some(event) => {
                let slot = match entries.get(&id) {
                    Some(Entry::Known(slot)) => slot.clone(),
                    _ => Arc::new(EventSlot::new(event)),
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

    /// An event exists (created here, or announced by another process when
    /// it was preheated), maybe with an id above the highest one known.
    pub fn created(&self, id: i64) {
        self.max_id.fetch_max(id, Ordering::AcqRel);
        let mut entries = self.entries.write().expect("catalog lock poisoned");
        if matches!(entries.get(&id), Some(Entry::Missing(_))) {
            entries.remove(&id);
        }
    }

    /// A newer definition of an event (an operator's change): later
    /// requests see it. The local sold-out flag and stock read are shared.
    pub fn refresh(&self, event: Event) {
        let mut entries = self.entries.write().expect("catalog lock poisoned");
        if let Some(Entry::Known(slot)) = entries.get(&event.id) {
            if slot.event.version >= event.version {
                return;
            }
            let fresh = EventSlot {
                event,
                page: RwLock::new(None),
                live: slot.live.clone(),
            };
            entries.insert(fresh.event.id, Entry::Known(Arc::new(fresh)));
        }
    }

    /// (id, version) of every cached event: what [`DEFINITION_REFRESH`] checks.
    pub fn cached_versions(&self) -> Vec<(i64, i64)> {
        self.entries
            .read()
            .expect("catalog lock poisoned")
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Known(slot) => Some((*id, slot.event.version)),
                Entry::Missing(_) => None,
            })
            .collect()
    }

    /// The highest event id in Postgres (refreshed by the background task).
    pub fn set_max_id(&self, id: i64) {
        self.max_id.fetch_max(id, Ordering::AcqRel);
        self.max_id_checked_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// The stock to show for an event: the last read, when it is fresh; the
    /// caller reads Redis when it is not (`None`). Marks the event viewed,
    /// so the refresher keeps it fresh. A local sold-out flag shows 0 at once.
    pub fn seen_stock(&self, slot: &EventSlot) -> Option<SeenStock> {
        let now = self.now_ms();
        slot.live.viewed_ms.store(now, Ordering::Relaxed);
        let stock = slot.live.stock.load(Ordering::Acquire);
        if stock == UNREAD {
            return None;
        }
        let read = slot.live.stock_read_ms.load(Ordering::Acquire);
        let age = Duration::from_millis(now.saturating_sub(read));
        if age > STOCK_REFRESH * 5 {
            return None;
        }
        let left = (stock != NOT_LOADED).then_some(stock);
        Some(SeenStock {
            left: if slot.is_sold_out() {
                left.map(|l| l.min(0))
            } else {
                left
            },
            age,
        })
    }

    /// Records the stock Redis just reported for an event.
    pub fn saw_stock(&self, slot: &EventSlot, left: Option<i64>) {
        slot.live
            .stock
            .store(left.unwrap_or(NOT_LOADED), Ordering::Release);
        slot.live
            .stock_read_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// Cached events viewed within the last few seconds: those to refresh.
    pub fn recently_viewed(&self) -> Vec<Arc<EventSlot>> {
        let now = self.now_ms();
        let within = VIEWED_WITHIN.as_millis() as u64;
        self.entries
            .read()
            .expect("catalog lock poisoned")
            .values()
            .filter_map(|e| match e {
                Entry::Known(slot) => {
                    let viewed = slot.live.viewed_ms.load(Ordering::Relaxed);
                    (viewed != NOT_VIEWED && now.saturating_sub(viewed) < within)
                        .then(|| slot.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Stock came back for this event (a refund, a rebuild, a preheat): let
    /// purchases reach Redis again, and forget the last stock read, which
    /// predates it, so the next view reads Redis.
    pub fn clear_sold_out(&self, id: i64) {
        if let Some(Entry::Known(slot)) =
            self.entries.read().expect("catalog lock poisoned").get(&id)
        {
            slot.live.sold_out.store(false, Ordering::Release);
            slot.live.stock.store(UNREAD, Ordering::Release);
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
