//! `seckill-loadtest`: a crowd of shoppers for a seckill engine.
//!
//! Drives one flash sale through the engine's HTTP API, records every
//! answer, waits for the writers to drain, verifies the sale (the engine's
//! invariant checker plus client-side truths read from Postgres), prints a
//! report and writes it as JSON with an SVG chart. Exit codes: 0 when every
//! check passed and every `--threshold` held, 1 when a check failed, 2 when
//! the run itself could not happen, 3 when only a threshold was missed
//! ([`cli::Exit`]).
//!
//! Layout, from the top down (a module uses only those below it):
//! `sale` (one run from start to verdict), `bench` (the `bench`
//! subcommand: the macro benchmark of SPEC §7) and `fill` (a sale of
//! millions of buyers, fast, for the bigsale benchmark); `verify` (the checks),
//! `report` and `chart` (output); `stats` (histograms, phases, timeline);
//! `crowd` (the workers and what they saw), `stock` (the stock poller),
//! `drain` (waiting for the writers); `plan` (the validated scenario);
//! `api` (the engine's HTTP API and outcome classification) and `cli`
//! (every flag and the exit codes); at the bottom `schedule` (the open
//! model's stages) and `threshold` (pass/fail expressions).

mod api;
mod bench;
mod chart;
mod cli;
mod crowd;
mod drain;
mod fill;
mod plan;
mod report;
mod sale;
mod schedule;
mod stalls;
mod stats;
mod stock;
mod threshold;
mod verify;

use std::process::ExitCode;

use cli::{Exit, Mode};

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Mode::parse() {
        Mode::Bench(args) => bench::run(*args).await,
        Mode::Stalls(args) => stalls::run(&args),
        Mode::Fill(args) => fill::run(*args).await,
        Mode::Run(args) => match plan::Plan::from_args(*args) {
            Ok(plan) => sale::run(plan).await,
            Err(err) => {
                eprintln!("seckill-loadtest: {err:#}");
                return Exit::Error.into();
            }
        },
    };
    result
        .unwrap_or_else(|err| {
            eprintln!("seckill-loadtest: error: {err:#}");
            Exit::Error
        })
        .into()
}
