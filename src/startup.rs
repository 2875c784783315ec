//! Build the application (connect, check the schema, start the writers and
//! background tasks, bind), then serve until told to stop, then shut down in
//! order: stop accepting HTTP, close the channel, let the writers drain and
//! commit, stop the reconciler and the other background tasks, close pools.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Auth,
    catalog::{self, Catalog},
    config::{PurchaseLayers, Settings},
    dashboard::Sampler,
    db,
    idempotency::DurableKeys,
    outbox::Relay,
    ratelimit::RateLimits,
    reconciler::{ReconcileSettings, Reconciler},
    redis::Redis,
    state::{App, AppState},
    telemetry, writer,
};

/// How long start-up keeps trying to reach Postgres and Redis.
const CONNECT_FOR: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    writers: JoinSet<()>,
    background: JoinSet<()>,
    /// Where the writers and the background tasks run (see [`BackgroundRuntime`]).
    background_runtime: BackgroundRuntime,
    /// Cancel to begin a graceful shutdown.
    shutdown: CancellationToken,
    /// Cancelled by the shutdown sequence once the writers have drained.
    stop_background: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // First: every metric registered from here on (writers, reconciler)
        // must reach the process's recorder.
        let metrics = telemetry::metrics_handle();
        let pool = db::connect(&settings.database_url, settings.database_pool, CONNECT_FOR)
            .await
            .context("cannot reach Postgres (SECKILL_DATABASE_URL)")?;
        check_schema(&pool).await?;
        let redis = Redis::connect(
            &settings.redis_url,
            &settings.redis_prefix,
            settings.redis_pool,
            settings.redis_timeout,
            CONNECT_FOR,
        );
        let redis = tokio::time::timeout(CONNECT_FOR + Duration::from_secs(2), redis)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .context("cannot reach Redis (SECKILL_REDIS_URL)")?;

        let background_runtime = BackgroundRuntime::start(settings.background_threads)?;
        let bg = background_runtime.handle();
        let (queue, writers) = writer::spawn(settings.writer, pool.clone(), redis.clone(), &bg);
        let instance = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let app = App {
            auth: Auth::new(&settings.jwt_secret, &settings.admin_token),
            limits: RateLimits::new(settings.rate),
            catalog: Catalog::default(),
            reconciler: Arc::new(Reconciler::new(
                pool.clone(),
                redis.clone(),
                queue.clone(),
                ReconcileSettings {
                    interval: settings.reconcile_interval,
                    grace: settings.reconcile_grace,
                    batch_max: settings.writer.batch_max,
                },
                instance.clone(),
            )),
            outbox: Arc::default(),
            crowd: Arc::default(),
            dashboard: Arc::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            metrics,
            writers: queue,
            durable_keys: DurableKeys::spawn(pool.clone()),
            db: pool,
            redis,
            instance,
            settings,
        };
        let state = AppState(Arc::new(app));

        let stop_background = CancellationToken::new();
        let mut background = JoinSet::new();
        if state.settings.purchase_layers == PurchaseLayers::Full {
            background.spawn_on(
                state.reconciler.clone().run_loop(stop_background.clone()),
                &bg,
            );
        } else {
            tracing::warn!(
                layers = ?state.settings.purchase_layers,
                "ablation run: purchases are answered without being persisted and no reconciler runs; a benchmark instrument, never a sale"
            );
        }
        let relay = Relay::new(
            state.db.clone(),
            &state.redis,
            state.settings.outbox.clone(),
            state.outbox.clone(),
            state.crowd.clone(),
        );
        background.spawn_on(relay.run(stop_background.clone()), &bg);
        let sampler = Sampler {
            db: state.db.clone(),
            redis: state.redis.clone(),
            writers: state.writers.clone(),
            metrics: state.metrics.clone(),
            outbox: state.outbox.clone(),
            instance: state.instance.clone(),
            samples: state.dashboard.clone(),
        };
        background.spawn_on(sampler.run(stop_background.clone()), &bg);
        background.spawn(watch_stock_back(state.clone(), stop_background.clone()));
        background.spawn(housekeeping(state.clone(), stop_background.clone()));
        background.spawn(refresh_catalog(state.clone(), stop_background.clone()));

        let listener = TcpListener::bind(state.settings.bind)
            .await
            .with_context(|| format!("cannot bind {}", state.settings.bind))?;
        Ok(Self {
            listener,
            state,
            writers,
            background,
            background_runtime,
            shutdown: CancellationToken::new(),
            stop_background,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Cancelling this token starts the graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then shuts down within
    /// `SECKILL_SHUTDOWN_GRACE_MS`: `/readyz` answers 503 for the ready delay
    /// while requests are still served, the listener closes, in-flight
    /// requests finish (connections still open at 60 % of the grace are
    /// dropped), the writers drain and commit what is queued (what they have
    /// not committed by the deadline stays in the Redis ledger for the
    /// reconciler), then the background tasks stop and the pools close.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            mut writers,
            mut background,
            background_runtime,
            shutdown,
            stop_background,
        } = self;
        let http = state.settings.http;
        tracing::info!(addr = %listener.local_addr()?, instance = %state.instance, "seckill serving");
        let router = crate::http::router(state.clone());
        let stop_accepting = CancellationToken::new();
        let accepting = {
            let stop = stop_accepting.clone();
            async move { crate::http::server::accept_until(&listener, router, http, stop).await }
        };
        let accepting = tokio::spawn(accepting);

        shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + http.shutdown_grace;
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!("shutting down: /readyz answers 503");
        tokio::time::sleep(http.ready_delay.min(http.shutdown_grace / 4)).await;
        stop_accepting.cancel();
        let connections = accepting.await.context("accept loop")?;
        let requests_until =
            tokio::time::Instant::now() + (deadline - tokio::time::Instant::now()).mul_f64(0.6);
        let dropped = connections.drain(requests_until).await;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "connections still open at the deadline were closed"
            );
        }

        tracing::info!(
            queued = state.writers.depth(),
            "stopped accepting; draining writers"
        );
        state.writers.close();
        let drained = tokio::time::timeout_at(deadline, async {
            while writers.join_next().await.is_some() {}
        })
        .await;
        match drained {
            Ok(()) => tracing::info!("writers drained"),
            Err(_) => {
                writers.abort_all();
                tracing::warn!(
                    "writers not drained by the deadline; what they held stays in the ledger"
                );
            }
        }
        stop_background.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while background.join_next().await.is_some() {}
        })
        .await;
        background.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), state.redis.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), state.db.close()).await;
        drop(background_runtime);
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The runtime of the work no shopper waits for: the writers, the outbox
/// relay, the reconciler and the dashboard sampler, on threads of their own
/// (`SECKILL_BACKGROUND_THREADS`). A step of theirs can be a few ms of CPU
/// with no await inside (a writer encoding a batch of 512, the relay
/// building 2 048 messages); on the HTTP runtime it would hold one of its
/// workers that long, and every request queued behind it would wait. On
/// threads of its own the OS time-slices it with the HTTP workers.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn start(threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("seckill-bg")
            .enable_all()
            .build()
            .context("starting the background runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the background runtime runs until dropped")
            .handle()
            .clone()
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        // Without blocking: this may run inside the HTTP runtime. Its tasks
        // have been joined or aborted by then.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Refuses to serve a database that is not fully migrated.
async fn check_schema(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let missing = db::missing_migrations(pool).await;
    if missing > 0 {
        bail!("database schema is {missing} migration(s) behind; run `seckill migrate` first");
    }
    Ok(())
}

/// Clears local sold-out flags when any process announces stock came back;
/// re-checks flagged events periodically in case a message was missed.
async fn watch_stock_back(app: AppState, stop: CancellationToken) {
    let poll = tokio::spawn(poll_sold_out(app.clone(), stop.clone()));
    match app.redis.subscribe_stock_back().await {
        Ok(mut stock_back) => {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    event = stock_back.next() => match event {
                        Some(id) => {
                            // Preheats announce here too: the event exists.
                            app.catalog.created(id);
                            app.catalog.clear_sold_out(id);
                        }
                        None => break,
                    },
                }
            }
            stock_back.close().await;
        }
        Err(err) => {
            tracing::warn!(error = %err, "stock-back subscribe failed; relying on polling")
        }
    }
    let _ = poll.await;
}

const SOLD_OUT_RECHECK: Duration = Duration::from_millis(500);

async fn poll_sold_out(app: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SOLD_OUT_RECHECK) => {}
        }
        for id in app.catalog.sold_out_ids() {
            let Some(Some(slot)) = app.catalog.cached(id) else {
                continue;
            };
            if let Ok(Some(left)) = app
                .redis
                .event_stock_left(crate::loading::event_buckets(&slot.event))
                .await
            {
                if left > 0 {
                    app.catalog.clear_sold_out(id);
                }
            }
        }
    }
}

/// Keeps the catalog fresh for the event page: the stock of the events
/// viewed lately, every [`catalog::STOCK_REFRESH`]; the highest event id and
/// the cached events' definitions (an operator's change made through another
/// process), every second.
async fn refresh_catalog(app: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(catalog::STOCK_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_max_id = tokio::time::Instant::now() - Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for slot in app.catalog.recently_viewed() {
            if let Ok(left) = app
                .redis
                .event_stock_left(crate::loading::event_buckets(&slot.event))
                .await
            {
                app.catalog.saw_stock(&slot, left);
            }
        }
        if last_max_id.elapsed() >= catalog::DEFINITION_REFRESH {
            last_max_id = tokio::time::Instant::now();
            if let Ok(max) = db::events::max_id(&app.db).await {
                app.catalog.set_max_id(max);
            }
            let cached = app.catalog.cached_versions();
            if !cached.is_empty() {
                if let Ok(changed) = db::events::changed_since(&app.db, &cached).await {
                    for event in changed {
                        app.catalog.refresh(event);
                    }
                }
            }
        }
    }
}

/// Evicts idle rate-limiter keys and expired negative cache entries.
async fn housekeeping(app: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        app.limits.evict_idle();
        app.catalog.prune();
    }
}
