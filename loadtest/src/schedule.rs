//! The open model's arrival schedule: stages of a target rate (hold or
//! linear ramp) and the fixed time at which the `i`th request is due.
//!
//! `--stages '10s:0->20000,20s:20000,5s:20000->80000'` ramps from 0 to
//! 20 000 requests/s over 10 s, holds 20 s, then spikes to 80 000/s over 5 s.
//! Request `i` is due when the integral of the rate reaches `i`, so the
//! first request of a run is due at 0 and a hold of `r`/s spaces requests
//! `1/r` apart. Depends on nothing else in the crate.

use std::{fmt, time::Duration};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

/// Highest rate a stage may ask for, in requests per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// One stage: `secs` long, the rate going linearly from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stage {
    pub secs: f64,
    pub from: f64,
    pub to: f64,
}

impl Stage {
    /// Requests due during the whole stage (fractional).
    fn arrivals(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.secs
    }

    /// Seconds into the stage at which `n` requests have come due: the root
    /// of `from·t + (to − from)·t²/(2·secs) = n`, in the form that stays
    /// exact for a flat stage and for one ramping from 0.
    fn time_of(&self, n: f64) -> f64 {
        if n <= 0.0 {
            return 0.0;
        }
        let accel = (self.to - self.from) / self.secs;
        let root = (self.from * self.from + 2.0 * accel * n).max(0.0).sqrt();
        (2.0 * n / (self.from + root)).min(self.secs)
    }

    /// `DUR:RATE` or `DUR:FROM->TO`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let (dur, rates) = text.split_once(':').with_context(|| {
            format!("stage `{text}`: expected DURATION:RATE or DURATION:FROM->TO")
        })?;
        let secs = parse_duration(dur.trim()).with_context(|| format!("stage `{text}`"))?;
        let (from, to) = match rates.split_once("->") {
            Some((a, b)) => (parse_rate(a.trim()), parse_rate(b.trim())),
            None => (parse_rate(rates.trim()), parse_rate(rates.trim())),
        };
        let (from, to) = (
            from.with_context(|| format!("stage `{text}`"))?,
            to.with_context(|| format!("stage `{text}`"))?,
        );
        Ok(Self { secs, from, to })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s:{}", self.secs, self.from)?;
        if self.to != self.from {
            write!(f, "->{}", self.to)?;
        }
        Ok(())
    }
}

/// `500ms`, `10s`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        bail!("duration `{text}` needs a unit: ms, s or m");
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .with_context(|| format!("duration `{text}` is not a positive number"))?
        * scale;
    ensure!(secs >= 0.001, "duration `{text}` is shorter than 1 ms");
    Ok(secs)
}

/// Requests per second: `20000`, `20k`, `0.5`.
fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = match text.strip_suffix('k') {
        Some(n) => (n, 1_000.0),
        None => (text, 1.0),
    };
    let rate = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .with_context(|| format!("rate `{text}` is not a number of requests per second"))?
        * scale;
    ensure!(rate <= MAX_RATE, "rate `{text}` is above {MAX_RATE}/s");
    Ok(rate)
}

/// The stages of a run and when each request is due.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "String")]
pub struct Schedule {
    stages: Vec<Stage>,
    /// Requests due before each stage starts (fractional), one per stage.
    before: Vec<f64>,
}

impl Schedule {
    /// The schedule of `stages`, which must ask for at least one request.
    pub fn new(stages: Vec<Stage>) -> anyhow::Result<Self> {
        ensure!(!stages.is_empty(), "a schedule needs at least one stage");
        let before = stages
            .iter()
            .scan(0.0, |due, s| {
                let at_start = *due;
                *due += s.arrivals();
                Some(at_start)
            })
            .collect();
        let schedule = Self { stages, before };
        ensure!(
            schedule.total() >= 1,
            "the stages ask for no request at all"
        );
        Ok(schedule)
    }

    /// `--rate`: one stage holding `rate`/s for `secs`.
    pub fn constant(rate: u64, secs: u64) -> anyhow::Result<Self> {
        Self::new(vec![Stage {
            secs: secs as f64,
            from: rate as f64,
            to: rate as f64,
        }])
    }

    /// `--stages`: comma-separated `DURATION:RATE` (hold) or
    /// `DURATION:FROM->TO` (linear ramp) stages.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let stages = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Stage::parse)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::new(stages)
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Requests the whole schedule asks for.
    pub fn total(&self) -> u64 {
        let last = self.stages.len() - 1;
        (self.before[last] + self.stages[last].arrivals() - 1e-9)
            .ceil()
            .max(0.0) as u64
    }

    /// Length of the whole schedule.
    pub fn secs(&self) -> f64 {
        self.stages.iter().map(|s| s.secs).sum()
    }

    /// When request `i` (from 0) is due, after the start; `None` past the
    /// schedule's last request.
    pub fn due(&self, i: u64) -> Option<Duration> {
        if i >= self.total() {
            return None;
        }
        let i = i as f64;
        let mut start = 0.0;
        for (stage, &before) in self.stages.iter().zip(&self.before) {
            if i < before + stage.arrivals() {
                return Some(Duration::from_secs_f64(start + stage.time_of(i - before)));
            }
            start += stage.secs;
        }
        // Rounding put the last request a hair past the end: due at the end.
        Some(Duration::from_secs_f64(start))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl From<Schedule> for String {
    fn from(s: Schedule) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Option<Duration>) -> f64 {
        d.expect("due").as_secs_f64()
    }

    #[test]
    fn parses_holds_ramps_and_units() {
        let s = Schedule::parse("10s:0->20000, 20s:20k,500ms:20000->80000,1m:1.5").unwrap();
        assert_eq!(
            s.stages(),
            [
                Stage {
                    secs: 10.0,
                    from: 0.0,
                    to: 20_000.0
                },
                Stage {
                    secs: 20.0,
                    from: 20_000.0,
                    to: 20_000.0
                },
                Stage {
                    secs: 0.5,
                    from: 20_000.0,
                    to: 80_000.0
                },
                Stage {
                    secs: 60.0,
                    from: 1.5,
                    to: 1.5
                },
            ]
        );
        assert_eq!(
            s.to_string(),
            "10s:0->20000,20s:20000,0.5s:20000->80000,60s:1.5"
        );
        assert_eq!(Schedule::parse(&s.to_string()).unwrap(), s);
        assert_eq!(s.secs(), 90.5);
        // 100 000 + 400 000 + 25 000 + 90
        assert_eq!(s.total(), 525_090);
    }

    #[test]
    fn rejects_what_it_cannot_schedule() {
        for bad in [
            "",
            "10s",
            "10:100",
            "0s:100",
            "-1s:100",
            "10s:-5",
            "10s:abc",
            "10s:100->",
            "10s:1e9",
            "10s:0",
            "5s:0->0,1s:0",
        ] {
            assert!(Schedule::parse(bad).is_err(), "accepted `{bad}`");
        }
    }

    #[test]
    fn a_hold_spaces_requests_evenly() {
        let s = Schedule::constant(1_000, 2).unwrap();
        assert_eq!(s.total(), 2_000);
        assert_eq!(secs(s.due(0)), 0.0);
        assert!((secs(s.due(1)) - 0.001).abs() < 1e-12);
        assert!((secs(s.due(1_999)) - 1.999).abs() < 1e-9);
        assert_eq!(s.due(2_000), None);
    }

    #[test]
    fn first_and_last_request_of_each_stage() {
        // 0 -> 1000/s over 2 s (1 000 requests), 1000/s for 1 s (1 000),
        // 1000 -> 3000/s over 1 s (2 000).
        let s = Schedule::parse("2s:0->1000,1s:1000,1s:1000->3000").unwrap();
        assert_eq!(s.total(), 4_000);
        // Ramp from 0: n requests due at t = sqrt(2n·secs/to) = sqrt(n/250).
        assert_eq!(secs(s.due(0)), 0.0);
        assert!((secs(s.due(1)) - (1.0f64 / 250.0).sqrt()).abs() < 1e-9);
        assert!((secs(s.due(999)) - (999.0f64 / 250.0).sqrt()).abs() < 1e-9);
        // The hold starts exactly at 2 s and spaces requests 1 ms apart.
        assert!((secs(s.due(1_000)) - 2.0).abs() < 1e-9);
        assert!((secs(s.due(1_999)) - 2.999).abs() < 1e-9);
        // The spike: 1000·t + 1000·t² = n.
        assert!((secs(s.due(2_000)) - 3.0).abs() < 1e-9);
        let t = 3.0 + (-1.0 + (1.0f64 + 4.0 * 1_999.0 / 1_000.0).sqrt()) / 2.0;
        assert!((secs(s.due(3_999)) - t).abs() < 1e-9);
        assert!(secs(s.due(3_999)) < 4.0);
        assert_eq!(s.due(4_000), None);
        // Due times never go backwards.
        let dues: Vec<f64> = (0..4_000).map(|i| secs(s.due(i))).collect();
        assert!(dues.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_pause_is_skipped_over() {
        let s = Schedule::parse("1s:10,2s:0,1s:10").unwrap();
        assert_eq!(s.total(), 20);
        assert!((secs(s.due(9)) - 0.9).abs() < 1e-9);
        assert!((secs(s.due(10)) - 3.0).abs() < 1e-9);
    }
}
