//! `seckill-loadtest`: a crowd of shoppers for a seckill engine.
//!
//! Drives one flash sale through the engine's HTTP API, records every
//! answer, waits for the writers to drain, verifies the sale (the engine's
//! invariant checker plus client-side truths read from Postgres), prints a
//! report and writes it as JSON with an SVG chart. Exit code 0 when every
//! check passed, 1 when one failed, 2 when the run itself could not happen.
//!
//! Layout, from the top down (a module uses only those below it):
//! `sale` (one run from start to verdict) and `bench` (the `bench`
//! subcommand: the macro benchmark of SPEC §7); `verify` (the checks),
//! `report` and `chart` (output); `stats` (histograms, phases, timeline);
//! `crowd` (the workers and what they saw), `stock` (the stock poller),
//! `drain` (waiting for the writers); `plan` (the validated scenario);
//! `api` (the engine's HTTP API and outcome classification); `cli` (every
//! flag).

mod api;
mod bench;
mod chart;
mod cli;
mod crowd;
mod drain;
mod plan;
mod report;
mod sale;
mod stats;
mod stock;
mod verify;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    if let Some(cli::Command::Bench(args)) = cli.command.take() {
        return match bench::run(*args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("seckill-loadtest bench: error: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let plan = match plan::Plan::from_args(cli.run) {
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
