//! `seckill-loadtest`: a crowd of shoppers for a seckill engine.
//!
//! Drives one flash sale through the engine's HTTP API, records every
//! answer, waits for the writers to drain, verifies the sale (the engine's
//! invariant checker plus client-side truths read from Postgres), prints a
//! report and writes it as JSON with an SVG chart. Exit code 0 when every
//! check passed, 1 when one failed, 2 when the run itself could not happen.
//!
//! Layout: `config` (CLI and scenarios), `api` (the engine's HTTP API and
//! outcome classification), `crowd` (the workers and the stock poller),
//! `stats` (histograms, phases, timeline), `verify` (drain and checks),
//! `report` and `chart` (output), `sale` (one run from start to verdict),
//! `bench` (the `bench` subcommand: the macro benchmark of SPEC §7).

mod api;
mod bench;
mod chart;
mod config;
mod crowd;
mod report;
mod sale;
mod stats;
mod verify;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = config::Cli::parse();
    if let Some(config::Command::Bench(args)) = cli.command.take() {
        return match bench::run(*args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("seckill-loadtest bench: error: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let plan = match config::Plan::from_cli(cli) {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("seckill-loadtest: {err:#}");
            return ExitCode::from(2);
        }
    };
    match sale::run(plan).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("seckill-loadtest: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
