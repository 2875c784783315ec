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
    /// Print a Lua script exactly as the engine loads it (with its prelude);
    /// without a name, every script's name and SHA1.
    #[command(hide = true)]
    Lua { name: Option<String> },
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
