//! A randomized, model-based test of the Lua scripts: random sequences of
//! purchase, re-sent purchase, release, discard, ack, admit, missing, repair,
//! rebuild, a Redis loss, a stock cap and the return of refunded orders, each applied to real Redis (through
//! the engine's own wrappers) and to a small reference model in Rust. After
//! every step Redis must hold exactly what the model holds (stock, buyer
//! counts, order lists, ledger), units must be conserved, and no shopper may
//! hold more than the limit.
//!
//! Seeded and reproducible: `SECKILL_MODEL_SEED` picks the first seed,
//! `SECKILL_MODEL_SEEDS` how many, `SECKILL_MODEL_STEPS` the steps per seed
//! (`make model` runs a long one). A failure prints the seed and step.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{TimeZone, Utc};
use seckill::{
    intent::{Intent, LedgerEntry},
    redis::{
        Admission, PersistedOrder, PurchaseOutcome, Redis, RefundedOrder, SaleParams, StockReturn,
        FAILED_KEPT_PER_SHOPPER,
    },
};
use uuid::Uuid;

use crate::helpers::spawn_app;

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    user: i64,
    quantity: i64,
    amount: i64,
    accepted_ms: i64,
}

/// What every order_no the test made is, outside Redis.
#[derive(Clone, Copy, Debug)]
struct Known {
    user: i64,
    quantity: i64,
    amount: i64,
    accepted_ms: i64,
    /// Persisted in "Postgres" (the model's): `Some(failed)`.
    persisted: Option<bool>,
    /// Refunded in "Postgres" (a confirmed order, paid back).
    refunded: bool,
}

/// The reference model of one event's Redis state.
#[derive(Clone, Debug, Default)]
struct Model {
    loaded: bool,
    total: i64,
    price: i64,
    limit: i64,
    stock: i64,
    bought: BTreeMap<i64, i64>,
    /// user -> [(order_no, failed)] in list order
    orders: BTreeMap<i64, Vec<(Uuid, bool)>>,
    ledger: HashMap<Uuid, Pending>,
    /// Units taken out of circulation by `discard`, plus the net of repairs
    /// and caps: stock + Σ bought + destroyed = total.
    destroyed: i64,
    /// Refunded orders whose units came back (refund.lua's `returned` set).
    returned: HashSet<Uuid>,
}

impl Model {
    fn pending_units(&self) -> i64 {
        self.ledger.values().map(|p| p.quantity).sum()
    }

    fn held(&self, user: i64) -> i64 {
        self.bought.get(&user).copied().unwrap_or(0)
    }

    fn listed(&self, user: i64, order_no: Uuid) -> bool {
        self.orders
            .get(&user)
            .is_some_and(|l| l.iter().any(|(o, _)| *o == order_no))
    }

    fn take(&mut self, user: i64, quantity: i64, order_no: Uuid, pending: Pending) {
        self.stock -= quantity;
        *self.bought.entry(user).or_default() += quantity;
        self.orders.entry(user).or_default().push((order_no, false));
        self.ledger.insert(order_no, pending);
    }

    /// purchase.lua
    fn purchase(&self, user: i64, quantity: i64, order_no: Uuid) -> Expect {
        if !self.loaded {
            return Expect::NotPreheated;
        }
        if self.listed(user, order_no) {
            return Expect::Replay(quantity * self.price);
        }
        if self.held(user) + quantity > self.limit {
            return Expect::LimitExceeded;
        }
        if self.stock < quantity {
            return Expect::SoldOut(self.stock);
        }
        Expect::Take(quantity * self.price)
    }

    /// release.lua (restock) and discard: settle failed orders once each.
    fn settle_failed(&mut self, order_nos: &[Uuid], restock: bool) -> i64 {
        if !self.loaded {
            // An unloaded sale (being rebuilt) is left alone.
            return 0;
        }
        let mut settled = 0;
        for order_no in order_nos {
            let Some(p) = self.ledger.remove(order_no) else {
                continue;
            };
            if restock {
                self.stock += p.quantity;
            } else {
                self.destroyed += p.quantity;
            }
            let held = self.bought.entry(p.user).or_default();
            *held -= p.quantity;
            if *held <= 0 {
                self.bought.remove(&p.user);
            }
            self.mark_failed(p.user, *order_no);
            settled += p.quantity;
        }
        settled
    }

    /// An order marked `!` in its shopper's list, the oldest failed ones
    /// beyond the kept number dropped (prelude.lua's mark_failed).
    fn mark_failed(&mut self, user: i64, order_no: Uuid) {
        if let Some(list) = self.orders.get_mut(&user) {
            for item in list.iter_mut() {
                if item.0 == order_no {
                    item.1 = true;
                }
            }
            let mut drop =
                list.iter().filter(|(_, f)| *f).count() as i64 - FAILED_KEPT_PER_SHOPPER as i64;
            list.retain(|(_, failed)| {
                if *failed && drop > 0 {
                    drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// refund.lua: a refunded order's units back once, not while pending.
    fn return_refunded(&mut self, order_no: Uuid, k: &Known) -> StockReturn {
        if !self.loaded {
            return StockReturn::NotLoaded;
        }
        if self.returned.contains(&order_no) {
            return StockReturn::AlreadyReturned;
        }
        if self.ledger.contains_key(&order_no) {
            return StockReturn::StillPending;
        }
        self.returned.insert(order_no);
        self.stock += k.quantity;
        let held = self.bought.entry(k.user).or_default();
        *held -= k.quantity;
        if *held <= 0 {
            self.bought.remove(&k.user);
        }
        self.mark_failed(k.user, order_no);
        StockReturn::Returned
    }

    /// admit.lua
    fn admit(&mut self, intents: &[(Uuid, Known)]) -> Option<Vec<i64>> {
        if !self.loaded {
            return None;
        }
        let mut states = Vec::new();
        for (order_no, k) in intents {
            let state = if self.ledger.contains_key(order_no) || self.listed(k.user, *order_no) {
                1
            } else if self.stock >= k.quantity && self.held(k.user) + k.quantity <= self.limit {
                self.take(
                    k.user,
                    k.quantity,
                    *order_no,
                    Pending {
                        user: k.user,
                        quantity: k.quantity,
                        amount: k.amount,
                        accepted_ms: k.accepted_ms,
                    },
                );
                2
            } else {
                0
            };
            states.push(state);
        }
        Some(states)
    }

    /// rebuild.lua's steps: Postgres truth plus the surviving ledger; `None`
    /// when that holds more than the stock: the sale is then left unloaded,
    /// its ledger settled (the next rebuild starts over).
    fn rebuild(&mut self, persisted: &[(Uuid, Known)]) -> Option<(i64, i64)> {
        let mut orders: BTreeMap<i64, Vec<(Uuid, bool)>> = BTreeMap::new();
        let mut bought: BTreeMap<i64, i64> = BTreeMap::new();
        let mut taken = 0;
        // Only the newest failed orders of each shopper are loaded.
        let mut failed_left: HashMap<i64, usize> = HashMap::new();
        let mut skipped = Vec::new();
        for (order_no, k) in persisted.iter().rev() {
            if k.persisted == Some(true) || k.refunded {
                let left = failed_left.entry(k.user).or_insert(FAILED_KEPT_PER_SHOPPER);
                if *left == 0 {
                    skipped.push(*order_no);
                } else {
                    *left -= 1;
                }
            }
        }
        for (order_no, k) in persisted {
            let failed = k.persisted == Some(true) || k.refunded;
            if skipped.contains(order_no) {
                continue;
            }
            orders.entry(k.user).or_default().push((*order_no, failed));
            if !failed {
                *bought.entry(k.user).or_default() += k.quantity;
                taken += k.quantity;
            }
        }
        let persisted_nos: Vec<Uuid> = persisted.iter().map(|(o, _)| *o).collect();
        let mut ledger = self.ledger.clone();
        ledger.retain(|o, _| !persisted_nos.contains(o));
        for (order_no, p) in &ledger {
            orders.entry(p.user).or_default().push((*order_no, false));
            *bought.entry(p.user).or_default() += p.quantity;
            taken += p.quantity;
        }
        self.ledger = ledger;
        if taken > self.total {
            self.loaded = false;
            return None;
        }
        self.loaded = true;
        self.returned.extend(
            persisted
                .iter()
                .filter(|(_, k)| k.refunded)
                .map(|(o, _)| *o),
        );
        self.orders = orders;
        self.bought = bought;
        self.stock = self.total - taken;
        self.destroyed = 0;
        Some((self.stock, self.ledger.len() as i64))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    NotPreheated,
    Replay(i64),
    LimitExceeded,
    SoldOut(i64),
    Take(i64),
}

struct Run<'a> {
    redis: &'a Redis,
    event: i64,
    sale: SaleParams,
    model: Model,
    known: HashMap<Uuid, Known>,
    users: Vec<i64>,
    rng: Rng,
    seed: u64,
    step: usize,
    op: String,
}

impl Run<'_> {
    fn fail(&self, what: String) -> ! {
        panic!(
            "model test seed {} step {} ({}): {what}",
            self.seed, self.step, self.op
        )
    }

    fn known_of(&self, pick: impl Fn(&Known, &Uuid) -> bool) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self
            .known
            .iter()
            .filter(|(o, k)| pick(k, o))
            .map(|(o, _)| *o)
            .collect();
        v.sort();
        v
    }

    async fn purchase(&mut self, user: i64, quantity: i64, order_no: Uuid) {
        let expect = self.model.purchase(user, quantity, order_no);
        let got = self
            .redis
            .purchase(self.event, user, quantity as i32, order_no)
            .await
            .unwrap();
        match (&expect, &got) {
            (Expect::NotPreheated, PurchaseOutcome::NotPreheated)
            | (Expect::LimitExceeded, PurchaseOutcome::LimitExceeded { .. }) => {}
            (Expect::SoldOut(left), PurchaseOutcome::SoldOut { stock_left })
                if left == stock_left => {}
            (
                Expect::Replay(amount),
                PurchaseOutcome::Accepted {
                    amount: a,
                    replay: true,
                    ..
                },
            ) if amount == a => {}
            (
                Expect::Take(amount),
                PurchaseOutcome::Accepted {
                    amount: a,
                    replay: false,
                    accepted_ms,
                },
            ) if amount == a => {
                let pending = Pending {
                    user,
                    quantity,
                    amount: *a,
                    accepted_ms: *accepted_ms,
                };
                self.model.take(user, quantity, order_no, pending);
                // A re-sent order Redis had forgotten keeps what "Postgres" knows of it.
                self.known
                    .entry(order_no)
                    .and_modify(|k| k.accepted_ms = *accepted_ms)
                    .or_insert(Known {
                        user,
                        quantity,
                        amount: *a,
                        accepted_ms: *accepted_ms,
                        persisted: None,
                        refunded: false,
                    });
            }
            _ => self.fail(format!("purchase: model {expect:?}, redis {got:?}")),
        }
    }

    async fn step(&mut self) {
        let users = self.users.clone();
        let roll = self.rng.below(100);
        let user = self.rng.pick(&users).unwrap();
        match roll {
            0..=34 => {
                self.op = "purchase".into();
                let quantity = 1 + self.rng.below(3) as i64;
                self.purchase(user, quantity, Uuid::now_v7()).await;
            }
            35..=44 => {
                self.op = "re-sent purchase".into();
                if let Some(o) = self.rng.pick(&self.known_of(|_, _| true)) {
                    let k = self.known[&o];
                    self.purchase(k.user, k.quantity, o).await;
                }
            }
            45..=56 => {
                // A writer commits a few pending orders: confirmed (ack),
                // failed (release, units back), or stock_lost (discard).
                let pending: Vec<Uuid> = {
                    let mut v: Vec<Uuid> = self.model.ledger.keys().copied().collect();
                    v.sort();
                    v
                };
                let mut chosen: Vec<Uuid> = pending
                    .into_iter()
                    .filter(|_| self.rng.chance(40))
                    .collect();
                // Sometimes one that is no longer pending: a writer retry.
                if let Some(o) = self.rng.pick(&self.known_of(|k, _| k.persisted.is_some())) {
                    chosen.push(o);
                }
                let how = self.rng.below(3);
                self.op = ["ack", "release", "discard"][how as usize].into();
                if how != 0 {
                    // A refunded order is confirmed in Postgres: only acked.
                    chosen.retain(|o| !self.known[o].refunded);
                }
                match how {
                    0 if self.rng.chance(30) => {
                        // Committed, the writer's ack not run yet: Postgres
                        // has them confirmed while the ledger still holds them.
                        self.op = "commit before the ack".into();
                        for o in &chosen {
                            if self.model.ledger.contains_key(o) {
                                self.known.get_mut(o).unwrap().persisted = Some(false);
                            }
                        }
                    }
                    0 => {
                        // The writer committed them; an unloaded sale (being
                        // rebuilt) ignores the ack, and the rebuild settles them.
                        let mut want = 0;
                        for o in &chosen {
                            if self.model.ledger.contains_key(o) {
                                self.known.get_mut(o).unwrap().persisted = Some(false);
                                if self.model.loaded {
                                    self.model.ledger.remove(o);
                                    want += 1;
                                }
                            }
                        }
                        let got = self.redis.ack(self.event, &chosen).await.unwrap();
                        if got != want {
                            self.fail(format!("acked {got}, model {want}"));
                        }
                    }
                    _ => {
                        let restock = how == 1;
                        for o in &chosen {
                            if self.model.ledger.contains_key(o) {
                                self.known.get_mut(o).unwrap().persisted = Some(true);
                            }
                        }
                        let want = self.model.settle_failed(&chosen, restock);
                        let got = if restock {
                            self.redis.release(self.event, &chosen).await.unwrap()
                        } else {
                            self.redis.discard(self.event, &chosen).await.unwrap()
                        };
                        if got != want {
                            self.fail(format!("settled {got} units, model {want}"));
                        }
                    }
                }
            }
            57..=66 => {
                self.op = "admit".into();
                // Intents a writer holds: pending, settled, or lost with Redis.
                let candidates = self.known_of(|k, _| k.persisted.is_none());
                let intents: Vec<(Uuid, Known)> = candidates
                    .into_iter()
                    .filter(|_| self.rng.chance(50))
                    .take(5)
                    .map(|o| (o, self.known[&o]))
                    .collect();
                if intents.is_empty() {
                    return;
                }
                let as_intents: Vec<Intent> = intents
                    .iter()
                    .map(|(o, k)| Intent {
                        buckets: 1,
                        order_no: *o,
                        event_id: self.event,
                        user_id: k.user,
                        quantity: k.quantity as i32,
                        amount: k.amount,
                        accepted_at: Utc.timestamp_millis_opt(k.accepted_ms).unwrap(),
                    })
                    .collect();
                let missing = self
                    .redis
                    .missing_from_ledger(self.event, &as_intents)
                    .await
                    .unwrap();
                let want_missing: Vec<Uuid> = intents
                    .iter()
                    .filter(|(o, _)| !self.model.ledger.contains_key(o))
                    .map(|(o, _)| *o)
                    .collect();
                let got_missing: Vec<Uuid> = missing.iter().map(|i| i.order_no).collect();
                if got_missing != want_missing {
                    self.fail(format!("missing {got_missing:?}, model {want_missing:?}"));
                }
                let want = self.model.admit(&intents);
                let got = match self.redis.admit(self.event, &as_intents).await.unwrap() {
                    Admission::NotLoaded => None,
                    Admission::Decided(states) => {
                        Some(states.into_iter().map(|(_, s)| s).collect())
                    }
                };
                if got != want {
                    self.fail(format!("admit {got:?}, model {want:?}"));
                }
            }
            67..=76 => {
                self.op = "repair".into();
                let observed = self.redis.sale_state(self.event).await.unwrap();
                if !observed.loaded {
                    return;
                }
                let ledger = self.redis.ledger(self.event).await.unwrap();
                let bought = self.redis.buyers(self.event).await.unwrap();
                let before = self.model.clone();
                // Sometimes the sale moves between the look and the write.
                if self.rng.chance(30) {
                    let quantity = 1 + self.rng.below(2) as i64;
                    self.purchase(user, quantity, Uuid::now_v7()).await;
                }
                if self.rng.chance(50) {
                    self.op = "repair stock".into();
                    let new_stock =
                        (observed.stock_left.unwrap_or(0) + self.rng.below(5) as i64 - 2).max(0);
                    // The reconciler sets the counter to what the buyers hold.
                    let held: i64 = before.bought.values().sum();
                    let repaired = self
                        .redis
                        .repair_stock(
                            self.event,
                            observed.stock_left,
                            observed.pending_units,
                            new_stock,
                            held,
                        )
                        .await
                        .unwrap();
                    let still = self.model.stock == before.stock
                        && self.model.pending_units() == before.pending_units();
                    if repaired != still {
                        self.fail(format!("stock repair wrote {repaired}, unchanged {still}"));
                    }
                    if repaired {
                        self.model.destroyed += self.model.stock - new_stock;
                        self.model.stock = new_stock;
                    }
                    return;
                }
                self.op = "repair buyers".into();
                let mut corrections = Vec::new();
                // As the reconciler does: a buyer's corrected count covers
                // at least their confirmed orders (refunded ones until their
                // units are back) and pending intents (what
                // the reconciler computes as truth), within the limit.
                for &u in &users {
                    if self.rng.chance(30) {
                        let have = bought.get(&u).copied().unwrap_or(0);
                        let pending: i64 = ledger
                            .iter()
                            .filter(|(_, e)| e.user_id == u)
                            .map(|(_, e)| e.quantity as i64)
                            .sum();
                        let confirmed: i64 = self
                            .known
                            .iter()
                            .filter(|(o, k)| {
                                k.user == u
                                    && k.persisted == Some(false)
                                    && !(k.refunded && self.model.returned.contains(*o))
                                    && !ledger.iter().any(|(p, _)| p == *o)
                            })
                            .map(|(_, k)| k.quantity)
                            .sum();
                        let truth = pending + confirmed;
                        let room = (self.model.limit - truth).max(0) as u64;
                        let want = truth + self.rng.below(room + 1) as i64;
                        corrections.push((u, have, want));
                    }
                }
                let repaired = self
                    .redis
                    .repair_buyers(self.event, &corrections)
                    .await
                    .unwrap();
                let still = corrections
                    .iter()
                    .all(|(u, have, _)| self.model.held(*u) == *have);
                if repaired != still {
                    self.fail(format!(
                        "buyer repair wrote {repaired}, model says unchanged {still}"
                    ));
                }
                if repaired {
                    for (u, have, want) in corrections {
                        self.model.destroyed += have - want;
                        if want > 0 {
                            self.model.bought.insert(u, want);
                        } else {
                            self.model.bought.remove(&u);
                        }
                    }
                }
            }
            77..=81 => {
                self.op = "cap".into();
                let cap = self.rng.below(self.model.total as u64 + 1) as i64;
                let want = if !self.model.loaded {
                    -1
                } else if self.model.stock > cap {
                    self.model.destroyed += self.model.stock - cap;
                    self.model.stock = cap;
                    cap
                } else {
                    self.model.stock
                };
                let got = self.redis.cap_stock(self.event, cap).await.unwrap();
                if got != want {
                    self.fail(format!("cap to {cap}: redis {got}, model {want}"));
                }
            }
            82..=86 => {
                self.op = "redis loss".into();
                self.redis.close_out(self.event).await.unwrap();
                self.model = Model {
                    total: self.model.total,
                    price: self.model.price,
                    limit: self.model.limit,
                    ..Model::default()
                };
            }
            87..=93 => {
                self.op = "refund".into();
                // Postgres refunds a confirmed order; then refund.lua for it,
                // maybe with one refunded before (a replay, the reconciler).
                let confirmed = self.known_of(|k, _| k.persisted == Some(false) && !k.refunded);
                let mut chosen = Vec::new();
                if let Some(o) = self.rng.pick(&confirmed) {
                    self.known.get_mut(&o).unwrap().refunded = true;
                    chosen.push(o);
                }
                if let Some(o) = self.rng.pick(&self.known_of(|k, _| k.refunded)) {
                    chosen.push(o);
                }
                if chosen.is_empty() {
                    return;
                }
                let want: Vec<StockReturn> = chosen
                    .iter()
                    .map(|o| {
                        let k = self.known[o];
                        self.model.return_refunded(*o, &k)
                    })
                    .collect();
                let orders: Vec<RefundedOrder> = chosen
                    .iter()
                    .map(|o| RefundedOrder {
                        order_no: *o,
                        user_id: self.known[o].user,
                        quantity: self.known[o].quantity as i32,
                    })
                    .collect();
                let got = self
                    .redis
                    .return_refunded(self.event, &orders)
                    .await
                    .unwrap();
                if got != want {
                    self.fail(format!("refund.lua {got:?}, model {want:?}"));
                }
            }
            _ => {
                self.op = "rebuild".into();
                let persisted: Vec<(Uuid, Known)> = {
                    let mut v: Vec<(Uuid, Known)> = self
                        .known
                        .iter()
                        .filter(|(_, k)| k.persisted.is_some())
                        .map(|(o, k)| (*o, *k))
                        .collect();
                    v.sort_by_key(|(o, _)| *o);
                    v
                };
                // A rebuild refuses when Postgres holds more than the stock;
                // the model's "Postgres" never does (confirmed ≤ what Redis sold).
                let want = self.model.rebuild(&persisted);
                let orders: Vec<PersistedOrder> = persisted
                    .iter()
                    .map(|(o, k)| PersistedOrder {
                        order_no: *o,
                        user_id: k.user,
                        quantity: k.quantity as i32,
                        failed: k.persisted == Some(true) || k.refunded,
                    })
                    .collect();
                let got = self.redis.rebuild(self.event, self.sale, &orders).await;
                match (got, want) {
                    (Ok(got), Some(want)) if got == want => {
                        let refunded: Vec<Uuid> = persisted
                            .iter()
                            .filter(|(_, k)| k.refunded)
                            .map(|(o, _)| *o)
                            .collect();
                        self.redis
                            .rebuild_returned(self.event, &refunded)
                            .await
                            .unwrap();
                    }
                    // More sold than stocked (repairs raised the stock): refused, unchanged.
                    (Err(_), None) => return,
                    (got, want) => self.fail(format!("rebuild {got:?}, model {want:?}")),
                }
                // The order of pending entries in a rebuilt list is the
                // ledger's hash order: take Redis's order once the sets agree.
                for &u in &users {
                    let got = self.redis.buyer_orders(self.event, u).await.unwrap();
                    let mut a = got.clone();
                    let mut b = self.model.orders.get(&u).cloned().unwrap_or_default();
                    a.sort();
                    b.sort();
                    if a != b {
                        self.fail(format!("user {u} list {got:?}, model {b:?}"));
                    }
                    if got.is_empty() {
                        self.model.orders.remove(&u);
                    } else {
                        self.model.orders.insert(u, got);
                    }
                }
            }
        }
    }

    async fn compare(&self) {
        let m = &self.model;
        let state = self.redis.sale_state(self.event).await.unwrap();
        if state.loaded != m.loaded {
            self.fail(format!("loaded {} vs model {}", state.loaded, m.loaded));
        }
        if !m.loaded {
            return;
        }
        if state.stock_left != Some(m.stock) {
            self.fail(format!("stock {:?} vs model {}", state.stock_left, m.stock));
        }
        let bought: BTreeMap<i64, i64> = self
            .redis
            .buyers(self.event)
            .await
            .unwrap()
            .into_iter()
            .collect();
        if bought != m.bought {
            self.fail(format!("bought {bought:?} vs model {:?}", m.bought));
        }
        let ledger: HashMap<Uuid, Pending> = self
            .redis
            .ledger(self.event)
            .await
            .unwrap()
            .into_iter()
            .map(|(o, e): (Uuid, LedgerEntry)| {
                (
                    o,
                    Pending {
                        user: e.user_id,
                        quantity: e.quantity as i64,
                        amount: e.amount,
                        accepted_ms: e.accepted_ms,
                    },
                )
            })
            .collect();
        if ledger != m.ledger {
            self.fail(format!("ledger {ledger:?} vs model {:?}", m.ledger));
        }
        // The counters the scripts keep in the same steps.
        let held: i64 = m.bought.values().sum();
        let counters = (state.held, state.pending_units, state.pending);
        let want = (Some(held), m.pending_units(), m.ledger.len() as i64);
        if counters != want {
            self.fail(format!(
                "counters (held, pending units, pending) {counters:?} vs {want:?}"
            ));
        }
        for &u in &self.users {
            let got = self.redis.buyer_orders(self.event, u).await.unwrap();
            let want = m.orders.get(&u).cloned().unwrap_or_default();
            if got != want {
                self.fail(format!("user {u} orders {got:?} vs model {want:?}"));
            }
            if want.iter().filter(|(_, f)| *f).count() > FAILED_KEPT_PER_SHOPPER {
                self.fail(format!("user {u} keeps too many failed orders"));
            }
            if m.held(u) > m.limit {
                self.fail(format!("user {u} holds {} > limit {}", m.held(u), m.limit));
            }
        }
        // The paged walks see every entry (HSCAN may repeat one: a set).
        let (mut cursor, mut walked) = ("0".to_string(), HashSet::new());
        loop {
            let (next, page) = self.redis.ledger_page(self.event, &cursor).await.unwrap();
            walked.extend(page.into_iter().map(|(o, _)| o));
            if next == "0" {
                break;
            }
            cursor = next;
        }
        if walked != m.ledger.keys().copied().collect::<HashSet<_>>() {
            self.fail(format!("ledger walk {walked:?}"));
        }
        let (mut cursor, mut walked) = ("0".to_string(), HashSet::new());
        loop {
            let (next, page) = self.redis.buyers_page(self.event, &cursor).await.unwrap();
            walked.extend(page);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        if walked != m.bought.keys().copied().collect::<HashSet<_>>() {
            self.fail(format!("buyers walk {walked:?}"));
        }
        // buyers.lua: every user's units and pending intents at one instant.
        let (_, buyers) = self.redis.buyers_at(self.event, &self.users).await.unwrap();
        for b in buyers {
            let mut got = b.pending.clone();
            got.sort();
            let mut want: Vec<(Uuid, i64)> = m
                .ledger
                .iter()
                .filter(|(_, p)| p.user == b.user_id)
                .map(|(o, p)| (*o, p.quantity))
                .collect();
            want.sort();
            if b.held != m.held(b.user_id) || got != want {
                self.fail(format!(
                    "buyers.lua {b:?} vs held {} pending {want:?}",
                    m.held(b.user_id)
                ));
            }
        }
        let refunded = self.known_of(|k, _| k.refunded);
        let got = self
            .redis
            .returned_among(self.event, &refunded)
            .await
            .unwrap();
        let want: Vec<bool> = refunded.iter().map(|o| m.returned.contains(o)).collect();
        if got != want {
            self.fail(format!(
                "returned set {got:?} vs model {want:?} for {refunded:?}"
            ));
        }
        if m.stock < 0 || m.stock + held + m.destroyed != m.total {
            self.fail(format!(
                "conservation: stock {} + held {held} + destroyed {} != total {}",
                m.stock, m.destroyed, m.total
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_agree_with_the_reference_model() {
    let app = spawn_app().await;
    let first_seed = env_u64("SECKILL_MODEL_SEED", 20261121);
    let seeds = env_u64("SECKILL_MODEL_SEEDS", 4);
    let steps = env_u64("SECKILL_MODEL_STEPS", 600) as usize;
    let now = Utc::now().timestamp_millis();
    for (i, seed) in (first_seed..first_seed + seeds).enumerate() {
        let mut rng = Rng(seed);
        let total = 5 + rng.below(20) as i64;
        let limit = 1 + rng.below(4) as i64;
        let sale = SaleParams {
            price: 1 + rng.below(1_000_000_000_000) as i64,
            per_user_limit: limit as i32,
            starts_ms: now - 60_000,
            ends_ms: now + 3_600_000,
            stock_total: total,
            paused: false,
        };
        let event = 9_000 + i as i64;
        assert!(app.redis.preheat(event, sale).await.unwrap());
        let mut run = Run {
            redis: &app.redis,
            event,
            sale,
            model: Model {
                loaded: true,
                total,
                price: sale.price,
                limit,
                stock: total,
                ..Model::default()
            },
            known: HashMap::new(),
            users: (1..=2 + rng.below(5) as i64).collect(),
            rng,
            seed,
            step: 0,
            op: "preheat".into(),
        };
        run.compare().await;
        for step in 1..=steps {
            run.step = step;
            run.step().await;
            run.compare().await;
        }
        println!("model seed {seed}: {steps} steps agree");
    }
    app.cleanup().await;
}
