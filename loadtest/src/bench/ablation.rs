//! One row of the cost table: `/healthz` and the selling phase against an
//! engine started with `seckill serve --ablation LAYER` (script, token,
//! limits, idempotency, full). `scripts/bench.sh` runs one engine per layer
//! and prints the rows side by side; each row's ratio is taken within its
//! own run, like the main benchmark's.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::{phase::PhaseReport, report::Head};
use crate::cli::Exit;

/// `ablation-<layer>.json`.
#[derive(Debug, Serialize)]
struct AblationRow<'a> {
    layer: &'a str,
    #[serde(flatten)]
    head: Head,
    healthz: PhaseReport,
    selling: PhaseReport,
    /// Selling 202/s ÷ `/healthz` 200/s.
    ratio_selling: f64,
}

/// Writes the row, prints it, and ends the run: nothing is drained, since
/// below `full` nothing is persisted.
pub fn finish(
    out_dir: &Path,
    layer: &str,
    head: Head,
    healthz: PhaseReport,
    selling: PhaseReport,
) -> anyhow::Result<Exit> {
    let ratio_selling = if healthz.rps > 0.0 {
        selling.rps / healthz.rps
    } else {
        0.0
    };
    let us = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "ablation {layer}: {:.0} purchases/s (ratio {ratio_selling:.3}), p99 {:.2} ms; CPU µs per purchase: engine {} redis {} postgres {} client {}",
        selling.rps,
        selling.p99_ms,
        us(selling.cpu.engine_us_per_request),
        us(selling.cpu.redis_us_per_request),
        us(selling.cpu.postgres_us_per_request),
        us(selling.cpu.client_us_per_request),
    );
    let row = AblationRow {
        layer,
        head,
        healthz,
        selling,
        ratio_selling,
    };
    let path = out_dir.join(format!("ablation-{layer}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&row)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Exit::Pass)
}
