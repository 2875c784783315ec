//! What every scenario shares: a rig with its engines, a running sale, a
//! crowd buying it (the opening), and the drain, reconcile and verdict that
//! close it. A scenario then reads as its fault alone.

use std::time::Duration;

use crate::{
    harness::{Api, Persistence, Rig, Sale},
    load::{Attempt, Load, LoadPlan},
    verdict::{Allow, Verdict},
    FINISH_WITHIN, REACH_WITHIN, STOCK, USERS,
};

/// How a scenario's world is set up.
pub struct Setup {
    name: &'static str,
    persistence: Persistence,
    engines: usize,
    settings: Vec<(&'static str, &'static str)>,
    stock: i64,
    users: i64,
    pace: Option<Duration>,
    keyed: bool,
}

impl Setup {
    /// One engine (reconciler every 300 ms), Redis without persistence, a
    /// sale of [`STOCK`] for [`USERS`] funded shoppers, the default crowd.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            persistence: Persistence::None,
            engines: 1,
            settings: vec![("SECKILL_RECONCILE_INTERVAL_MS", "300")],
            stock: STOCK,
            users: USERS,
            pace: None,
            keyed: false,
        }
    }

    pub fn persistence(mut self, persistence: Persistence) -> Self {
        self.persistence = persistence;
        self
    }

    pub fn engines(mut self, engines: usize) -> Self {
        self.engines = engines;
        self
    }

    /// Engine settings on top of (or replacing) the defaults.
    pub fn settings(mut self, settings: &[(&'static str, &'static str)]) -> Self {
        for (name, value) in settings {
            self.settings.retain(|(n, _)| n != name);
            self.settings.push((name, value));
        }
        self
    }

    pub fn sale(mut self, stock: i64, users: i64) -> Self {
        self.stock = stock;
        self.users = users;
        self
    }

    /// Each shopper's pause between requests (zero: full speed).
    pub fn pace(mut self, pace: Duration) -> Self {
        self.pace = Some(pace);
        self
    }

    /// Every shopper sends an Idempotency-Key.
    pub fn keyed(mut self) -> Self {
        self.keyed = true;
        self
    }

    /// Starts the rig and the engines, opens the sale, lets the crowd in.
    pub async fn start(self) -> Scenario {
        let mut rig = Rig::new(self.name, self.persistence).await;
        for _ in 0..self.engines {
            rig.start_engine(&self.settings).await;
        }
        let api = rig.api(0);
        let sale = api.open_sale(self.stock, self.users).await;
        let mut plan = LoadPlan::new(rig.engines.iter().map(|e| e.url()).collect());
        if let Some(pace) = self.pace {
            plan.pace = pace;
        }
        plan.keyed = self.keyed;
        let load = Load::start(plan, &sale);
        Scenario {
            verdict: Verdict::new(self.name),
            rig,
            api,
            sale,
            load,
        }
    }
}

/// A sale under load, waiting for its fault.
pub struct Scenario {
    pub rig: Rig,
    /// The operator API of the first engine.
    pub api: Api,
    pub sale: Sale,
    pub load: Load,
    pub verdict: Verdict,
}

impl Scenario {
    /// Waits until a share of the stock is sold (1/`part`): the moment to strike.
    pub async fn sold(&self, part: i64) {
        self.load
            .wait_accepted((self.sale.stock / part) as usize, REACH_WITHIN)
            .await;
    }

    /// Lets the crowd finish (sold out, or out of shoppers); every attempt.
    pub async fn finish_load(&mut self) -> Vec<Attempt> {
        let load = std::mem::replace(&mut self.load, Load::idle());
        load.join(FINISH_WITHIN).await
    }

    /// Drains, reconciles twice, judges the sale and what every client was
    /// told (through `api`, the operator API of a surviving engine), prints
    /// the verdict and cleans up; panics when any check failed.
    pub async fn conclude(mut self, api: &Api, attempts: &[Attempt], allow: Allow) {
        self.verdict
            .judge(&self.rig, api, &self.sale, attempts, allow)
            .await;
        self.verdict.conclude();
        self.rig.finish().await;
    }
}
