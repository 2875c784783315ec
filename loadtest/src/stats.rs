//! Turns the raw samples into figures: an HDR histogram of latency per
//! outcome, throughput by phase (selling / sold out), and a per-second
//! timeline of requests by outcome and p99 latency.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{api::Outcome, crowd::Sample};

/// Highest latency a histogram tracks (60 s, in µs); larger values saturate.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1_000.0,
        }
    }
}

/// Requests per second over one stretch of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub requests: u64,
    pub secs: f64,
    pub rps: f64,
}

impl Phase {
    fn new(requests: u64, secs: f64) -> Self {
        let rps = if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        };
        Self {
            requests,
            secs,
            rps,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    /// Length of this bucket: 1 s, except the last one which ends with the
    /// last answer.
    pub width_secs: f64,
    pub by_outcome: BTreeMap<&'static str, u64>,
    pub total: u64,
    pub p99_ms: f64,
}

/// Every figure of a run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub latency: BTreeMap<&'static str, Latency>,
    pub latency_all: Option<Latency>,
    /// From the sale's start to the last answer.
    pub overall: Phase,
    /// From the start to the first `sold_out` answer.
    pub selling: Phase,
    /// From the first `sold_out` answer to the last answer.
    pub sold_out: Option<Phase>,
    /// First `sold_out` answer, seconds after the start.
    pub sold_out_at_secs: Option<f64>,
    /// Last 202, seconds after the start.
    pub last_accept_secs: Option<f64>,
    pub timeline: Vec<Second>,
}

/// A latency histogram in µs with `sigfig` significant figures.
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("static histogram bounds")
}

/// The figures of a run from its samples.
pub fn compute(samples: &[Sample]) -> Stats {
    let mut per_outcome: Vec<Option<Histogram<u64>>> = vec![None; Outcome::ALL.len()];
    let mut all = histogram(3);
    let mut counts = [0u64; Outcome::ALL.len()];
    let mut end_us = 0u32;
    let mut sold_out_at: Option<u32> = None;
    let mut last_accept: Option<u32> = None;
    let mut timeline = Timeline::new(samples);

    for s in samples {
        let i = s.outcome.index();
        counts[i] += 1;
        let lat = u64::from(s.latency_us).clamp(1, MAX_LATENCY_US);
        per_outcome[i]
            .get_or_insert_with(|| histogram(3))
            .saturating_record(lat);
        all.saturating_record(lat);
        end_us = end_us.max(s.at_us);
        match s.outcome {
            Outcome::SoldOut => sold_out_at = Some(sold_out_at.map_or(s.at_us, |t| t.min(s.at_us))),
            Outcome::Accepted => {
                last_accept = Some(last_accept.map_or(s.at_us, |t| t.max(s.at_us)))
            }
            _ => {}
        }
        timeline.record(s, lat);
    }

    let requests = samples.len() as u64;
    let overall = Phase::new(requests, secs(end_us));
    let (selling, sold_out) = match sold_out_at {
        Some(t) => {
            let before = samples.iter().filter(|s| s.at_us < t).count() as u64;
            (
                Phase::new(before, secs(t)),
                Some(Phase::new(
                    requests - before,
                    secs(end_us.saturating_sub(t)),
                )),
            )
        }
        None => (overall.clone(), None),
    };

    Stats {
        requests,
        outcomes: label_counts(&counts),
        latency: Outcome::ALL
            .iter()
            .filter_map(|o| {
                per_outcome[o.index()]
                    .as_ref()
                    .map(|h| (o.label(), Latency::of(h)))
            })
            .collect(),
        latency_all: (!all.is_empty()).then(|| Latency::of(&all)),
        overall,
        selling,
        sold_out,
        sold_out_at_secs: sold_out_at.map(secs),
        last_accept_secs: last_accept.map(secs),
        timeline: timeline.seconds(end_us),
    }
}

fn secs(us: u32) -> f64 {
    f64::from(us) / 1e6
}

/// Counts by outcome label, leaving out the outcomes that never happened.
fn label_counts(c: &[u64]) -> BTreeMap<&'static str, u64> {
    Outcome::ALL
        .iter()
        .filter(|o| c[o.index()] > 0)
        .map(|o| (o.label(), c[o.index()]))
        .collect()
}

/// Counts by outcome and a latency histogram for every second of the run.
struct Timeline {
    counts: Vec<[u64; Outcome::ALL.len()]>,
    hists: Vec<Histogram<u64>>,
}

impl Timeline {
    /// Empty buckets up to the second of the last sample.
    fn new(samples: &[Sample]) -> Self {
        let seconds = samples
            .iter()
            .map(|s| s.at_us / 1_000_000)
            .max()
            .map_or(0, |m| m + 1);
        Self {
            counts: vec![[0u64; Outcome::ALL.len()]; seconds as usize],
            hists: (0..seconds).map(|_| histogram(2)).collect(),
        }
    }

    fn record(&mut self, s: &Sample, latency_us: u64) {
        let sec = (s.at_us / 1_000_000) as usize;
        self.counts[sec][s.outcome.index()] += 1;
        self.hists[sec].saturating_record(latency_us);
    }

    /// The buckets as reported; the last one ends at `end_us`.
    fn seconds(&self, end_us: u32) -> Vec<Second> {
        self.counts
            .iter()
            .zip(&self.hists)
            .enumerate()
            .map(|(t, (c, h))| Second {
                t: t as u32,
                width_secs: (secs(end_us) - t as f64).clamp(0.001, 1.0),
                by_outcome: label_counts(c),
                total: c.iter().sum(),
                p99_ms: if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64 / 1_000.0
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u32, lat_ms: u32, outcome: Outcome) -> Sample {
        Sample {
            at_us: at_ms * 1_000,
            latency_us: lat_ms * 1_000,
            outcome,
        }
    }

    #[test]
    fn phases_split_at_the_first_sold_out() {
        let samples = [
            s(100, 1, Outcome::Accepted),
            s(900, 2, Outcome::Accepted),
            s(1_000, 1, Outcome::SoldOut),
            s(1_500, 1, Outcome::SoldOut),
            s(2_000, 1, Outcome::SoldOut),
        ];
        let st = compute(&samples);
        assert_eq!(st.requests, 5);
        assert_eq!(st.selling.requests, 2);
        assert_eq!(st.sold_out.as_ref().unwrap().requests, 3);
        assert_eq!(st.sold_out_at_secs, Some(1.0));
        assert_eq!(st.last_accept_secs, Some(0.9));
        assert_eq!(st.outcomes["sold_out"], 3);
        assert_eq!(st.timeline.len(), 3);
        assert_eq!(st.timeline[0].width_secs, 1.0);
        assert!(st.timeline[2].width_secs <= 0.001 + 1e-9);
        assert_eq!(st.timeline[0].by_outcome["accepted"], 2);
        assert_eq!(st.timeline[1].total, 2);
        let acc = &st.latency["accepted"];
        assert_eq!(acc.count, 2);
        assert!(acc.max_ms >= 1.99 && acc.max_ms <= 2.01);
    }
}
