//! Pass/fail criteria on a run's figures, k6-style: `--threshold 'p99<5ms'
//! --threshold 'errors<0.1%'`. Parsed here from the command line, measured
//! by `stats`, judged at the end of the run. Depends on nothing else in the
//! crate.
//!
//! An expression is `METRIC OP VALUE[UNIT]`:
//! - latency, in ms unless a unit says otherwise (`us`, `ms`, `s`): `p50`,
//!   `p90`, `p95`, `p99`, `p99.9` (any `pN` or `p(N)`), `max`, `mean`;
//! - `errors`: 5xx (503 included), timeouts and transport errors, as a count
//!   or, with `%`, a share of the answered requests;
//! - `dropped`: requests of an open-model schedule not sent on time, as a
//!   count or, with `%`, a share of the scheduled requests;
//! - `rps`: answers per second over the run.
//!
//! `OP` is one of `<`, `<=`, `>`, `>=`, `==`.

use std::fmt;

use anyhow::{bail, ensure, Context};
use serde::Serialize;

/// What a threshold measures, in the unit it is judged in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// Latency percentile (99.0 for p99), in ms.
    Percentile(f64),
    /// Highest latency, in ms.
    MaxMs,
    /// Mean latency, in ms.
    MeanMs,
    /// Errors, as a count or a percentage of the answers.
    Errors(Share),
    /// Requests not sent on time, as a count or a percentage of the scheduled.
    Dropped(Share),
    /// Answers per second over the run.
    Rps,
}

/// A count, or a percentage of a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Count,
    Percent,
}

/// The comparison a measured value must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, measured: f64, limit: f64) -> bool {
        match self {
            Op::Lt => measured < limit,
            Op::Le => measured <= limit,
            Op::Gt => measured > limit,
            Op::Ge => measured >= limit,
            Op::Eq => measured == limit,
        }
    }
}

/// One `--threshold`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "String")]
pub struct Threshold {
    pub metric: Metric,
    pub op: Op,
    /// In the metric's unit (ms for latency, % for a share).
    pub limit: f64,
    /// As written on the command line.
    text: String,
}

impl Threshold {
    /// Parses `METRIC OP VALUE[UNIT]`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at = compact
            .find(['<', '>', '='])
            .with_context(|| format!("threshold `{text}`: no comparison (<, <=, >, >=, ==)"))?;
        let (name, rest) = compact.split_at(at);
        let (op, value) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (op, v)))
        .with_context(|| format!("threshold `{text}`: unknown comparison"))?;
        let (number, unit) = value.split_at(
            value
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(value.len()),
        );
        let number: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .with_context(|| format!("threshold `{text}`: `{value}` is not a number"))?;
        let (metric, limit) = metric_and_limit(&name.to_ascii_lowercase(), number, unit)
            .with_context(|| format!("threshold `{text}`"))?;
        Ok(Self {
            metric,
            op,
            limit,
            text: text.trim().to_owned(),
        })
    }

    /// The verdict on `measured` (`None`: the run has no such figure, which
    /// fails the threshold).
    pub fn judge(&self, measured: Option<f64>) -> Judged {
        Judged {
            threshold: self.text.clone(),
            measured,
            unit: unit_of(self.metric),
            passed: measured.is_some_and(|m| self.op.holds(m, self.limit)),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<Threshold> for String {
    fn from(t: Threshold) -> String {
        t.text
    }
}

/// The metric a name stands for, and `number` + `unit` in its unit.
fn metric_and_limit(name: &str, number: f64, unit: &str) -> anyhow::Result<(Metric, f64)> {
    let share = || match unit {
        "" => Ok(Share::Count),
        "%" => Ok(Share::Percent),
        _ => bail!("`{unit}`: a count takes no unit, a share takes %"),
    };
    let ms = || {
        Ok::<_, anyhow::Error>(match unit {
            "" | "ms" => number,
            "us" | "µs" => number / 1_000.0,
            "s" => number * 1_000.0,
            _ => bail!("`{unit}`: a latency is in us, ms or s"),
        })
    };
    let metric = match name {
        "max" => Metric::MaxMs,
        "mean" | "avg" => Metric::MeanMs,
        "errors" => Metric::Errors(share()?),
        "dropped" => Metric::Dropped(share()?),
        "rps" => {
            ensure!(
                unit.is_empty() || unit == "/s",
                "`{unit}`: rps takes no unit"
            );
            return Ok((Metric::Rps, number));
        }
        _ => Metric::Percentile(percentile(name)?),
    };
    match metric {
        Metric::Errors(_) | Metric::Dropped(_) => Ok((metric, number)),
        _ => Ok((metric, ms()?)),
    }
}

/// `p99`, `p99.9`, `p(99.9)` → 99.0, 99.9.
fn percentile(name: &str) -> anyhow::Result<f64> {
    let digits = name
        .strip_prefix("p(")
        .and_then(|n| n.strip_suffix(')'))
        .or_else(|| name.strip_prefix('p'))
        .with_context(|| {
            format!("unknown metric `{name}` (pN, p(N), max, mean, errors, dropped, rps)")
        })?;
    let p: f64 = digits
        .parse()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .with_context(|| format!("`{name}`: a percentile is p0 to p100"))?;
    Ok(p)
}

fn unit_of(metric: Metric) -> &'static str {
    match metric {
        Metric::Percentile(_) | Metric::MaxMs | Metric::MeanMs => "ms",
        Metric::Errors(Share::Percent) | Metric::Dropped(Share::Percent) => "%",
        Metric::Errors(Share::Count) | Metric::Dropped(Share::Count) => "",
        Metric::Rps => "/s",
    }
}

/// One threshold's verdict, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub threshold: String,
    pub measured: Option<f64>,
    pub unit: &'static str,
    pub passed: bool,
}

impl fmt::Display for Judged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict}  {:<24} measured ", self.threshold)?;
        match self.measured {
            Some(m) if self.unit.is_empty() => write!(f, "{m}"),
            Some(m) if self.unit == "/s" => write!(f, "{m:.0}/s"),
            Some(m) => write!(f, "{m:.3} {}", self.unit),
            None => f.write_str("nothing (no such figure in this run)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Metric, Op, f64) {
        let t = Threshold::parse(text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
        (t.metric, t.op, t.limit)
    }

    #[test]
    fn parses_the_k6_like_forms() {
        use Metric::*;
        assert_eq!(parsed("p99<5ms"), (Percentile(99.0), Op::Lt, 5.0));
        assert_eq!(parsed("p(99.9) <= 20"), (Percentile(99.9), Op::Le, 20.0));
        assert_eq!(parsed("p99.9<1s"), (Percentile(99.9), Op::Lt, 1_000.0));
        assert_eq!(parsed("p50 < 500us"), (Percentile(50.0), Op::Lt, 0.5));
        assert_eq!(parsed("max<100"), (MaxMs, Op::Lt, 100.0));
        assert_eq!(parsed("avg>=1ms"), (MeanMs, Op::Ge, 1.0));
        assert_eq!(parsed("errors<0.1%"), (Errors(Share::Percent), Op::Lt, 0.1));
        assert_eq!(parsed("errors==0"), (Errors(Share::Count), Op::Eq, 0.0));
        assert_eq!(parsed("dropped<1%"), (Dropped(Share::Percent), Op::Lt, 1.0));
        assert_eq!(parsed("rps>10000"), (Rps, Op::Gt, 10_000.0));
        assert_eq!(
            Threshold::parse(" p99 < 5ms ").unwrap().to_string(),
            "p99 < 5ms"
        );
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "p99",
            "p99<",
            "p99<abc",
            "p99<5%",
            "p101<5",
            "q99<5",
            "errors<5ms",
            "rps>5ms",
            "dropped<1s",
            "p99=>5",
            "<5",
            "latency<5ms",
        ] {
            assert!(Threshold::parse(bad).is_err(), "accepted `{bad}`");
        }
    }

    #[test]
    fn judges_and_shows_the_measured_value() {
        let t = Threshold::parse("p99<5ms").unwrap();
        let pass = t.judge(Some(3.2));
        assert!(pass.passed);
        assert_eq!(
            pass.to_string(),
            "PASS  p99<5ms                  measured 3.200 ms"
        );
        assert!(!t.judge(Some(5.0)).passed);
        assert!(!t.judge(None).passed);
        let e = Threshold::parse("errors<=0").unwrap().judge(Some(2.0));
        assert!(!e.passed);
        assert!(e.to_string().ends_with("measured 2"));
    }
}
