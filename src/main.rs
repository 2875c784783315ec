//! The `seckill` binary: parse the command line, load settings, call the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use seckill::{
    auth::Auth,
    config::{PurchaseLayers, Settings},
    db,
    redis::{Keys, Scripts},
    startup::Application,
    telemetry,
};
use sqlx::{migrate::MigrateDatabase, Postgres};

mod operator_cli;

/// mimalloc: per-thread free lists without glibc's arena locks and
/// consolidation (malloc/free were a tenth of the engine's CPU under load),
/// and freed memory returned to the OS, so RSS falls back after a sale.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "seckill", version, about = "Flash-sale engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, the writers and the reconciler.
    Serve {
        /// Benchmark only: run the purchase path up to this layer (script,
        /// token, limits, idempotency, full). Below `full`, purchases are
        /// not persisted.
        #[arg(long, hide = true, default_value = "full")]
        ablation: PurchaseLayers,
    },
    /// Create the database if needed and apply the migrations.
    Migrate,
    /// Print a shopper JWT signed with SECKILL_JWT_SECRET.
    Token {
        #[arg(long)]
        user: i64,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Print the OpenAPI 3.1 document (what `GET /openapi.json` serves).
    Openapi,
    /// Print an event's Redis keys, one a line, in the order the sale
    /// scripts take them (for tools such as redis-benchmark).
    #[command(hide = true)]
    RedisKeys {
        #[arg(long)]
        event: i64,
        #[arg(long, env = "SECKILL_REDIS_PREFIX", default_value = "sk")]
        prefix: String,
    },
    /// Operator: create, preheat, list and show sales (admin API).
    #[command(subcommand)]
    Event(EventCommand),
    /// Operator: fund shoppers' wallets (admin API).
    #[command(subcommand)]
    Wallets(WalletsCommand),
    /// Operator: run one reconciler pass now and print its report (admin API).
    Reconcile {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print a Lua script exactly as the engine loads it (with its prelude);
    /// without a name, every script's name and SHA1.
    #[command(hide = true)]
    Lua { name: Option<String> },
}

/// Where the engine's admin API is, and the token for it.
#[derive(clap::Args)]
struct EngineArgs {
    /// The engine (or the balancer in front of it).
    #[arg(long, env = "SECKILL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Subcommand)]
enum EventCommand {
    /// Create a sale; prints it (with its id).
    Create {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long)]
        name: String,
        /// Price in minor units.
        #[arg(long)]
        price: i64,
        #[arg(long)]
        stock: i64,
        #[arg(long, default_value_t = 1)]
        limit: i32,
        /// RFC 3339, or relative: +90s, +10m, +2h, now.
        #[arg(long)]
        starts_at: String,
        #[arg(long)]
        ends_at: String,
        /// Stock buckets, 1..=64: the stock split across that many Redis
        /// hash tags (so across the primaries of a Redis Cluster).
        #[arg(long, default_value_t = 1)]
        buckets: i32,
        /// Preheat it right after creating it.
        #[arg(long)]
        preheat: bool,
    },
    /// Load a sale into Redis (`--force`: rebuild it from Postgres).
    Preheat {
        #[command(flatten)]
        engine: EngineArgs,
        id: i64,
        #[arg(long)]
        force: bool,
    },
    /// Every sale (or those with one status), one a line; all pages.
    List {
        #[command(flatten)]
        engine: EngineArgs,
        /// scheduled, running, paused, ended or sold_out.
        #[arg(long)]
        status: Option<String>,
        /// One JSON object a line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One sale with its live figures.
    Show {
        #[command(flatten)]
        engine: EngineArgs,
        id: i64,
    },
}

#[derive(Subcommand)]
enum WalletsCommand {
    /// Set wallets first..first+count to a balance, creating those missing.
    Seed {
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long, default_value_t = 1)]
        first: i64,
        #[arg(long)]
        count: i64,
        /// Balance in minor units.
        #[arg(long)]
        balance: i64,
    },
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the reason, then its causes.
            eprintln!("seckill: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { ablation } => serve(ablation).await,
        Command::Migrate => migrate().await,
        Command::Token { user, ttl_secs } => {
            anyhow::ensure!(user > 0, "--user must be a positive 64-bit integer");
            let secret =
                std::env::var("SECKILL_JWT_SECRET").context("SECKILL_JWT_SECRET is required")?;
            anyhow::ensure!(
                secret.len() >= 32,
                "SECKILL_JWT_SECRET must be at least 32 bytes"
            );
            println!(
                "{}",
                Auth::new(secret.as_bytes(), "unused-admin-token").issue(user, ttl_secs)
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", seckill::http::openapi::json());
            Ok(())
        }
        Command::Event(command) => operator_cli::event(command).await,
        Command::Wallets(WalletsCommand::Seed {
            engine,
            first,
            count,
            balance,
        }) => operator_cli::seed_wallets(&engine, first, count, balance).await,
        Command::Reconcile { engine } => operator_cli::reconcile(&engine).await,
        Command::RedisKeys { event, prefix } => {
            for key in Keys::new(prefix).event(event).all() {
                println!("{key}");
            }
            Ok(())
        }
        Command::Lua { name: None } => {
            for script in Scripts::default().all() {
                println!("{} {}", script.sha1(), script.name());
            }
            Ok(())
        }
        Command::Lua { name: Some(name) } => {
            let scripts = Scripts::default();
            let script = scripts
                .all()
                .into_iter()
                .find(|s| s.name() == name)
                .with_context(|| format!("no script named {name:?}"))?;
            print!("{}", script.body());
            Ok(())
        }
    }
}

async fn serve(layers: PurchaseLayers) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    settings.purchase_layers = layers;
    telemetry::init_tracing(settings.log_format);
    tracing::info!(?settings, "starting");
    let app = Application::build(settings).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn migrate() -> anyhow::Result<()> {
    let url = std::env::var("SECKILL_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/seckill".into());
    if !Postgres::database_exists(&url)
        .await
        .context("cannot reach Postgres")?
    {
        Postgres::create_database(&url)
            .await
            .context("cannot create the database")?;
    }
    let pool = db::connect(&url, 2, std::time::Duration::from_secs(10))
        .await
        .context("cannot reach Postgres")?;
    db::MIGRATOR.run(&pool).await.context("migration failed")?;
    println!(
        "migrations applied ({} in total)",
        db::MIGRATOR.iter().count()
    );
    Ok(())
}
