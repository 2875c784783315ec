//! Stock buckets: an event's stock split across hash tags, so one hot item
//! spreads over the masters of a Redis Cluster.
//!
//! An event of one bucket (the default) has the tag `{<event_id>}`. An event
//! split into N > 1 buckets gives bucket b the tag `{<event_id>.<b>.<salt>}`
//! with the smallest salt whose cluster slot lies in the b-th N-th of the
//! 16384 slots: on a cluster whose masters own equal ranges of slots (as
//! `redis-cli --cluster create` makes them), N = masters puts one bucket on
//! each master, and N = k × masters puts k on each. A shopper's home bucket
//! is `user_id mod N`: their per-user record and every order of theirs live
//! there, so the limit check and the stock take stay one atomic step.

/// Most stock buckets an event can have.
pub const MAX_BUCKETS: u16 = 64;

/// Redis Cluster's slot count.
pub const SLOTS: u32 = 16_384;

/// One stock bucket of an event: a share of its stock, with its own hash tag.
/// A shopper's purchases all go to their home bucket ([`Bucket::home`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub event_id: i64,
    /// 0..of
    pub index: u16,
    /// How many buckets the event has (1: the whole sale on one tag).
    pub of: u16,
}

impl Bucket {
    /// The only bucket of a one-bucket event.
    pub fn whole(event_id: i64) -> Self {
        Self {
            event_id,
            index: 0,
            of: 1,
        }
    }

    /// Bucket `index` of an event of `of` buckets.
    pub fn new(event_id: i64, index: u16, of: u16) -> Self {
        debug_assert!(of >= 1 && index < of);
        Self {
            event_id,
            index,
            of,
        }
    }

    /// A shopper's home bucket: `user_id mod of`. Their per-user record and
    /// every order of theirs live there for the life of the sale.
    pub fn home(event_id: i64, of: u16, user_id: i64) -> Self {
        let of = of.max(1);
        Self::new(event_id, user_id.rem_euclid(of as i64) as u16, of)
    }

    /// Every bucket of an event of `of` buckets, in index order.
    pub fn all(event_id: i64, of: u16) -> impl Iterator<Item = Bucket> {
        let of = of.max(1);
        (0..of).map(move |index| Self::new(event_id, index, of))
    }

    /// The other buckets, starting after this one: where to look for stock.
    pub fn others(self) -> impl Iterator<Item = Bucket> {
        (1..self.of)
            .map(move |step| Self::new(self.event_id, (self.index + step) % self.of, self.of))
    }

    /// The hash tag, without braces.
    pub fn hash_tag(&self) -> String {
        if self.of <= 1 {
            return self.event_id.to_string();
        }
        let low = self.index as u32 * SLOTS / self.of as u32;
        let high = (self.index as u32 + 1) * SLOTS / self.of as u32;
        (0u32..)
            .map(|salt| format!("{}.{}.{salt}", self.event_id, self.index))
            .find(|tag| (low..high).contains(&(fred::util::redis_keyslot(tag.as_bytes()) as u32)))
            .expect("some salt lands in every range")
    }

    /// The cluster slot of the bucket's keys.
    pub fn slot(&self) -> u16 {
        fred::util::redis_keyslot(self.hash_tag().as_bytes())
    }
}

/// An event id alone is the only bucket of a one-bucket event.
impl From<i64> for Bucket {
    fn from(event_id: i64) -> Self {
        Self::whole(event_id)
    }
}

/// Every bucket of one event, as its Postgres row says (`stock_buckets`,
/// fixed at creation): what the steps over a whole event walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Buckets {
    pub event_id: i64,
    pub of: u16,
}

impl Buckets {
    pub fn new(event_id: i64, of: u16) -> Self {
        Self {
            event_id,
            of: of.max(1),
        }
    }

    /// Every bucket, in index order.
    pub fn iter(self) -> impl Iterator<Item = Bucket> {
        Bucket::all(self.event_id, self.of)
    }

    /// A shopper's home bucket.
    pub fn home(self, user_id: i64) -> Bucket {
        Bucket::home(self.event_id, self.of, user_id)
    }
}

/// An event id alone is a one-bucket event.
impl From<i64> for Buckets {
    fn from(event_id: i64) -> Self {
        Self::new(event_id, 1)
    }
}
