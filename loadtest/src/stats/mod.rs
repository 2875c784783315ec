//! Turns the raw samples into figures: an HDR histogram of latency per
//! outcome, throughput by phase (selling / sold out), errors and dropped
//! requests, and a fine timeline ([`timeline`]). In the open model every
//! latency counts from the request's due time; the send lag and the latency
//! from the actual send are reported beside it.

mod timeline;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use self::timeline::Bucket;
use crate::{
    api::Outcome,
    crowd::Sample,
    threshold::{Metric, Share},
};

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

/// Every figure of a run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Requests answered (or timed out, or failed in transport).
    pub requests: u64,
    /// Requests of the open model's schedule not sent: more than
    /// `--max-lag-ms` late with every connection busy.
    pub dropped: u64,
    /// 5xx (503 included), timeouts and transport errors.
    pub errors: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    /// From the due time (open model) or the send (closed loop) to the answer.
    pub latency: BTreeMap<&'static str, Latency>,
    pub latency_all: Option<Latency>,
    /// Open model: from the actual send to the answer, as a tool that ignores
    /// coordinated omission would report it.
    pub latency_from_send: Option<Latency>,
    /// Open model: from the due time to the send.
    pub send_lag: Option<Latency>,
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
    /// Width of the timeline's buckets.
    pub bucket_secs: f64,
    pub timeline: Vec<Bucket>,
    /// Every latency, for the thresholds' percentiles.
    #[serde(skip)]
    all: Histogram<u64>,
}

/// A latency histogram in µs with `sigfig` significant figures.
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("static histogram bounds")
}

/// The figures of a run from its samples and the due times of its dropped
/// requests; `open`: the crowd was paced by a schedule.
pub fn compute(samples: &[Sample], dropped: &[u32], open: bool) -> Stats {
    let mut per_outcome: Vec<Option<Histogram<u64>>> = vec![None; Outcome::ALL.len()];
    let mut all = histogram(3);
    let (mut from_send, mut lag) = (histogram(3), histogram(3));
    let mut counts = [0u64; Outcome::ALL.len()];
    let mut end_us = 0u32;
    let mut sold_out_at: Option<u32> = None;
    let mut last_accept: Option<u32> = None;

    for s in samples {
        let i = s.outcome.index();
        counts[i] += 1;
        let lat = u64::from(s.latency_us).clamp(1, MAX_LATENCY_US);
        per_outcome[i]
            .get_or_insert_with(|| histogram(3))
            .saturating_record(lat);
        all.saturating_record(lat);
        if open {
            from_send.saturating_record(lat.saturating_sub(u64::from(s.lag_us)).max(1));
            lag.saturating_record(u64::from(s.lag_us).clamp(1, MAX_LATENCY_US));
        }
        end_us = end_us.max(s.at_us);
        match s.outcome {
            Outcome::SoldOut => sold_out_at = Some(sold_out_at.map_or(s.at_us, |t| t.min(s.at_us))),
            Outcome::Accepted => {
                last_accept = Some(last_accept.map_or(s.at_us, |t| t.max(s.at_us)))
            }
            _ => {}
        }
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
    let width_ms = timeline::width_ms(end_us, sold_out_at);
    let timeline_end = dropped.iter().copied().fold(end_us, u32::max);
    let summary = |h: &Histogram<u64>| (!h.is_empty()).then(|| Latency::of(h));

    Stats {
        requests,
        dropped: dropped.len() as u64,
        errors: Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|o| counts[o.index()])
            .sum(),
        outcomes: label_counts(&counts),
        latency: Outcome::ALL
            .iter()
            .filter_map(|o| {
                per_outcome[o.index()]
                    .as_ref()
                    .map(|h| (o.label(), Latency::of(h)))
            })
            .collect(),
        latency_all: summary(&all),
        latency_from_send: summary(&from_send),
        send_lag: summary(&lag),
        overall,
        selling,
        sold_out,
        sold_out_at_secs: sold_out_at.map(secs),
        last_accept_secs: last_accept.map(secs),
        bucket_secs: f64::from(width_ms) / 1_000.0,
        timeline: timeline::buckets(samples, dropped, timeline_end, width_ms),
        all,
    }
}

impl Stats {
    /// The figure a threshold judges, in its unit; `None` when the run has
    /// no such figure (no answers, or nothing was scheduled).
    pub fn measure(&self, metric: Metric) -> Option<f64> {
        let ms = |us: u64| us as f64 / 1_000.0;
        let share = |n: u64, of: u64, how: Share| match how {
            Share::Count => Some(n as f64),
            Share::Percent => (of > 0).then(|| n as f64 * 100.0 / of as f64),
        };
        let answered = !self.all.is_empty();
        match metric {
            Metric::Percentile(p) => answered.then(|| ms(self.all.value_at_quantile(p / 100.0))),
            Metric::MaxMs => answered.then(|| ms(self.all.max())),
            Metric::MeanMs => answered.then(|| self.all.mean() / 1_000.0),
            Metric::Errors(how) => share(self.errors, self.requests, how),
            Metric::Dropped(how) => share(self.dropped, self.requests + self.dropped, how),
            Metric::Rps => answered.then_some(self.overall.rps),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u32, lat_ms: u32, outcome: Outcome) -> Sample {
        Sample {
            at_us: at_ms * 1_000,
            latency_us: lat_ms * 1_000,
            lag_us: 0,
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
        let st = compute(&samples, &[], false);
        assert_eq!(st.requests, 5);
        assert_eq!(st.selling.requests, 2);
        assert_eq!(st.sold_out.as_ref().unwrap().requests, 3);
        assert_eq!(st.sold_out_at_secs, Some(1.0));
        assert_eq!(st.last_accept_secs, Some(0.9));
        assert_eq!(st.outcomes["sold_out"], 3);
        // 2 s sold out after 1 s: 10 ms buckets, the last one ends at 2 s.
        assert_eq!(st.bucket_secs, 0.01);
        assert_eq!(st.timeline.len(), 201);
        assert_eq!(st.timeline[10].by_outcome["accepted"], 1);
        assert_eq!(st.timeline[100].total, 1);
        assert!(st.timeline[200].width_secs <= 0.001 + 1e-9);
        let acc = &st.latency["accepted"];
        assert_eq!(acc.count, 2);
        assert!(acc.max_ms >= 1.99 && acc.max_ms <= 2.01);
        assert!(st.latency_from_send.is_none() && st.send_lag.is_none());
    }

    #[test]
    fn the_open_model_reports_lag_drops_and_errors() {
        let mut late = s(500, 30, Outcome::SoldOut);
        late.lag_us = 25_000;
        let samples = [
            s(100, 2, Outcome::Accepted),
            late,
            s(600, 3, Outcome::ServerError),
            s(700, 3, Outcome::RateLimited),
        ];
        let st = compute(&samples, &[400_000, 450_000], true);
        assert_eq!((st.requests, st.dropped, st.errors), (4, 2, 1));
        // From the due time, the late answer is the slowest; from the send it is not.
        assert!((st.latency_all.as_ref().unwrap().max_ms - 30.0).abs() < 0.05);
        assert!((st.latency_from_send.as_ref().unwrap().max_ms - 5.0).abs() < 0.01);
        assert!((st.send_lag.as_ref().unwrap().max_ms - 25.0).abs() < 0.02);
        let dropped: u64 = st.timeline.iter().map(|b| b.dropped).sum();
        assert_eq!(dropped, 2);

        let m = |metric| st.measure(metric).unwrap();
        assert!((m(Metric::Percentile(50.0)) - 3.0).abs() < 0.01);
        assert!((m(Metric::MaxMs) - 30.0).abs() < 0.05);
        assert_eq!(m(Metric::Errors(Share::Count)), 1.0);
        assert_eq!(m(Metric::Errors(Share::Percent)), 25.0);
        assert!((m(Metric::Dropped(Share::Percent)) - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(compute(&[], &[], true).measure(Metric::MaxMs), None);
    }
}
