//! The run as a timeline of equal buckets: answers by outcome, dropped
//! requests and p99 latency per bucket. The width adapts to the run, so that
//! a sale that sells out in one second still draws a curve of some twenty
//! points per line, and a long run stays within a thousand buckets.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{label_counts, secs};
use crate::{api::Outcome, crowd::Sample};

/// Bucket widths to choose from, in ms.
const WIDTHS_MS: [u32; 11] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
];
/// Buckets wanted over the selling phase (start to first `sold_out`).
const SELLING_BUCKETS: u32 = 20;
/// Buckets wanted over the whole run.
const RUN_BUCKETS: u32 = 200;
/// Most buckets over the whole run, whatever the selling phase wants.
const MAX_BUCKETS: u32 = 1_000;

/// One bucket of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start, seconds after the sale started.
    pub t_secs: f64,
    /// Length: the timeline's width, except the last bucket, which ends with
    /// the last answer.
    pub width_secs: f64,
    /// Answers that arrived in this bucket.
    pub by_outcome: BTreeMap<&'static str, u64>,
    pub total: u64,
    /// Requests due in this bucket and dropped (open model).
    pub dropped: u64,
    /// Of the answers that arrived in this bucket.
    pub p99_ms: f64,
}

impl Bucket {
    /// The bucket's middle, for a chart.
    pub fn mid_secs(&self) -> f64 {
        self.t_secs + self.width_secs / 2.0
    }

    /// `n` per second over this bucket.
    pub fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.width_secs
    }
}

/// The width for a run ending at `end_us` that sold out at `sold_out_us`:
/// the coarsest that gives the selling phase `SELLING_BUCKETS` and the run
/// `RUN_BUCKETS`, unless that makes more than `MAX_BUCKETS`.
pub(super) fn width_ms(end_us: u32, sold_out_us: Option<u32>) -> u32 {
    let end_ms = end_us / 1_000;
    let mut want = end_ms / RUN_BUCKETS;
    if let Some(s) = sold_out_us {
        want = want.min(s / 1_000 / SELLING_BUCKETS);
    }
    let fine = WIDTHS_MS.iter().rev().find(|&&w| w <= want);
    let fewest = WIDTHS_MS
        .iter()
        .find(|&&w| w >= end_ms.div_ceil(MAX_BUCKETS));
    let last = WIDTHS_MS[WIDTHS_MS.len() - 1];
    (*fine.unwrap_or(&WIDTHS_MS[0])).max(*fewest.unwrap_or(&last))
}

/// The buckets of `width_ms` from the start to `end_us`; `dropped` holds due
/// times in µs.
pub(super) fn buckets(
    samples: &[Sample],
    dropped: &[u32],
    end_us: u32,
    width_ms: u32,
) -> Vec<Bucket> {
    let width_us = width_ms * 1_000;
    let n = if samples.is_empty() && dropped.is_empty() {
        0
    } else {
        (end_us / width_us + 1) as usize
    };
    let mut counts = vec![[0u64; Outcome::ALL.len()]; n];
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut drops = vec![0u64; n];
    for s in samples {
        let b = (s.at_us / width_us) as usize;
        counts[b][s.outcome.index()] += 1;
        latencies[b].push(s.latency_us);
    }
    for &due in dropped {
        drops[(due.min(end_us) / width_us) as usize] += 1;
    }
    let width = f64::from(width_ms) / 1_000.0;
    (0..n)
        .map(|b| {
            let t_secs = b as f64 * width;
            Bucket {
                t_secs,
                width_secs: (secs(end_us) - t_secs).clamp(0.001, width),
                by_outcome: label_counts(&counts[b]),
                total: counts[b].iter().sum(),
                dropped: drops[b],
                p99_ms: p99(&mut latencies[b]) as f64 / 1_000.0,
            }
        })
        .collect()
}

/// The nearest-rank 99th percentile (0 for no values); reorders `values`.
fn p99(values: &mut [u32]) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let rank = (values.len() * 99).div_ceil(100) - 1;
    *values.select_nth_unstable(rank).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_second_sell_out_gets_twenty_buckets() {
        // Sold out after 1 s of a 30 s run: 50 ms, 20 buckets to sell out.
        assert_eq!(width_ms(30_000_000, Some(1_000_000)), 50);
        // A 3.5 s run wants 200 buckets anyway: the finest width.
        assert_eq!(width_ms(3_500_000, Some(1_000_000)), 10);
        // No sell-out in 20 s: 200 buckets.
        assert_eq!(width_ms(20_000_000, None), 100);
        // Sellout-storm: 1.24 s of 37 s.
        assert_eq!(width_ms(37_000_000, Some(1_240_000)), 50);
        // A long run caps the count: 300 s in at most 1 000 buckets.
        assert_eq!(width_ms(300_000_000, Some(1_000_000)), 500);
        assert_eq!(width_ms(0, None), 10);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=200).rev().collect();
        assert_eq!(p99(&mut v), 198);
        assert_eq!(p99(&mut [7]), 7);
        assert_eq!(p99(&mut []), 0);
    }
}
