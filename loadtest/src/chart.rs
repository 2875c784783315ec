//! The SVG chart: requests/s by outcome (and dropped, and the open model's
//! target rate) with p99 latency on a second axis (top), and stock left /
//! orders pending over time (bottom), both at the timeline's resolution,
//! with the sell-out and the end of the drain marked by vertical lines.

use std::path::Path;

use anyhow::anyhow;
use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    api::Outcome,
    schedule::Schedule,
    stats::{Bucket, Stats},
    stock::StockPoint,
};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 900;
const X_DESC: &str = "seconds since the sale started";
/// Height of one mark's label.
const MARK_LINE: i32 = 18;

/// A line of the stock panel: label, colour, and the figure it plots.
type StockSeries = (&'static str, RGBAColor, fn(&StockPoint) -> i64);
/// One panel of the chart.
type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// A panel's plot with seconds across and one figure up.
type Plot<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What the chart of a run shows.
pub struct Chart<'a> {
    pub title: &'a str,
    pub stats: &'a Stats,
    pub stock: &'a [StockPoint],
    /// The open model's target rate, if any.
    pub schedule: Option<&'a Schedule>,
    /// When the writers had persisted every 202, seconds after the start.
    pub drained_at: Option<f64>,
}

/// A moment marked with a vertical line.
struct Mark {
    label: String,
    at: f64,
    color: RGBAColor,
}

impl Chart<'_> {
    /// Draws the chart into `path`.
    pub fn render(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(HEIGHT * 3 / 5);

        let ends = [
            self.stats.timeline.last().map(|b| b.t_secs + b.width_secs),
            self.stock.last().map(|p| p.t_secs),
            self.drained_at,
        ];
        let x_max = ends.into_iter().flatten().fold(0.1, f64::max) * 1.02;
        let marks = self.marks();
        self.draw_rates(&top, x_max, &marks)?;
        self.draw_stock(&bottom, x_max, &marks)?;

        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
        Ok(())
    }

    fn marks(&self) -> Vec<Mark> {
        let sold_out = self.stats.sold_out_at_secs.map(|at| Mark {
            label: format!("sold out {at:.3} s"),
            at,
            color: RED.to_rgba(),
        });
        let drained = self.drained_at.map(|at| Mark {
            label: format!("drained {at:.3} s"),
            at,
            color: MAGENTA.to_rgba(),
        });
        sold_out.into_iter().chain(drained).collect()
    }

    /// Requests/s by outcome, dropped/s and the target rate; p99 latency on
    /// the right axis.
    fn draw_rates(&self, panel: &Panel<'_>, x_max: f64, marks: &[Mark]) -> anyhow::Result<()> {
        let timeline = &self.stats.timeline;
        let corners = self.schedule.map(target_corners).unwrap_or_default();
        let rps_max = timeline
            .iter()
            .map(|b| b.per_sec(b.total.max(b.dropped)))
            .chain(corners.iter().map(|c| c.1))
            .fold(1.0, f64::max)
            * 1.1;
        let p99_max = timeline.iter().map(|b| b.p99_ms).fold(0.1, f64::max) * 1.1;
        let caption = format!(
            "{}: requests/s by outcome, p99 latency ({} ms buckets)",
            self.title,
            (self.stats.bucket_secs * 1_000.0).round()
        );
        let mut chart = plot(panel, &caption, x_max, rps_max, true)?
            .set_secondary_coord(0f64..x_max, 0f64..p99_max);
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("requests / s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("p99 latency (ms)")
            .draw()?;

        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            let label = outcome.label();
            if self.stats.outcomes.contains_key(label) {
                let count = |b: &Bucket| b.by_outcome.get(label).copied().unwrap_or(0);
                let color = Palette99::pick(i).to_rgba();
                draw_rate(&mut chart, timeline, label, color, count)?;
            }
        }
        if self.stats.dropped > 0 {
            let grey = RGBColor(128, 128, 128).to_rgba();
            let label = "dropped (not sent in time)";
            draw_rate(&mut chart, timeline, label, grey, |b| b.dropped)?;
        }
        if !corners.is_empty() {
            let style = BLUE.mix(0.6).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(corners, 8, 4, style))?
                .label("target rate (schedule)")
                .legend(legend_line(BLUE.mix(0.6)));
        }
        let p99 = timeline
            .iter()
            .filter(|b| b.total > 0)
            .map(|b| (b.mid_secs(), b.p99_ms));
        chart
            .draw_secondary_series(LineSeries::new(p99, BLACK.stroke_width(2)))?
            .label("p99 latency (ms, right axis)")
            .legend(legend_line(BLACK.to_rgba()));
        draw_marks(&mut chart, marks, x_max, rps_max)?;
        draw_legend(&mut chart)
    }

    /// Stock left, units sold and orders pending, as polled, and the 202s
    /// the crowd got so far.
    fn draw_stock(&self, panel: &Panel<'_>, x_max: f64, marks: &[Mark]) -> anyhow::Result<()> {
        let accepted = Outcome::Accepted.label();
        let accepted_so_far: Vec<(f64, f64)> = self
            .stats
            .timeline
            .iter()
            .scan(0u64, |sum, b| {
                *sum += b.by_outcome.get(accepted).copied().unwrap_or(0);
                Some((b.t_secs + b.width_secs, *sum as f64))
            })
            .collect();
        let stock_max = self
            .stock
            .iter()
            .map(|p| p.stock_left.max(p.pending).max(p.sold) as f64)
            .chain(accepted_so_far.last().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.1;
        let caption = format!(
            "stock left, sold and orders pending (polled every {} ms), 202s answered",
            crate::stock::POLL_EVERY.as_millis()
        );
        let mut chart = plot(panel, &caption, x_max, stock_max, false)?;
        chart
            .configure_mesh()
            .x_desc(X_DESC)
            .y_desc("units / orders")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let series: [StockSeries; 3] = [
            ("stock left", BLUE.to_rgba(), |p| p.stock_left),
            ("sold (persisted)", GREEN.to_rgba(), |p| p.sold),
            ("pending", RED.to_rgba(), |p| p.pending),
        ];
        for (label, color, value) in series {
            let points = self
                .stock
                .iter()
                .filter(|p| p.t_secs >= 0.0)
                .map(move |p| (p.t_secs, value(p) as f64));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label)
                .legend(legend_line(color));
        }
        let orange = RGBColor(230, 140, 0).to_rgba();
        chart
            .draw_series(LineSeries::new(accepted_so_far, orange.stroke_width(1)))?
            .label("202s answered so far (client)")
            .legend(legend_line(orange));
        draw_marks(&mut chart, marks, x_max, stock_max)?;
        draw_legend(&mut chart)
    }
}

/// One line of answers (or drops) per second, bucket by bucket.
fn draw_rate(
    chart: &mut Plot<'_>,
    timeline: &[Bucket],
    label: &str,
    color: RGBAColor,
    count: impl Fn(&Bucket) -> u64,
) -> anyhow::Result<()> {
    let points = timeline.iter().map(|b| (b.mid_secs(), b.per_sec(count(b))));
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(legend_line(color));
    Ok(())
}

/// The schedule's target rate as the corners of its piecewise-linear line.
fn target_corners(schedule: &Schedule) -> Vec<(f64, f64)> {
    let mut start = 0.0;
    let mut corners = Vec::new();
    for s in schedule.stages() {
        corners.push((start, s.from));
        start += s.secs;
        corners.push((start, s.to));
    }
    corners
}

/// A dashed vertical line per mark, its label at the foot of the line (the
/// legend holds the top right, where the drain usually is): right of the
/// line, or left of it in the right half of the plot so that it stays
/// inside; a second mark's label goes one line higher, so that close marks
/// stay legible.
fn draw_marks(chart: &mut Plot<'_>, marks: &[Mark], x_max: f64, y_max: f64) -> anyhow::Result<()> {
    for (i, m) in marks.iter().enumerate() {
        let line = [(m.at, 0.0), (m.at, y_max)];
        chart.draw_series(DashedLineSeries::new(line, 6, 4, m.color.stroke_width(2)))?;
        let (side, dx) = if m.at > x_max / 2.0 {
            (HPos::Right, -5)
        } else {
            (HPos::Left, 5)
        };
        let font = ("sans-serif", 15)
            .into_font()
            .color(&m.color)
            .pos(Pos::new(side, VPos::Bottom));
        let dy = -4 - MARK_LINE * i as i32;
        chart.draw_series(std::iter::once(
            EmptyElement::at((m.at, 0.0)) + Text::new(m.label.clone(), (dx, dy), font),
        ))?;
    }
    Ok(())
}

/// A plot of `y_max` up, `x_max` seconds across, its mesh not drawn yet.
/// Both panels keep the same room on the right (the top one for its second
/// axis), so that their time axes line up.
fn plot<'a>(
    panel: &Panel<'a>,
    caption: &str,
    x_max: f64,
    y_max: f64,
    right_axis: bool,
) -> anyhow::Result<Plot<'a>> {
    let mut builder = ChartBuilder::on(panel);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70);
    if right_axis {
        builder.right_y_label_area_size(70);
    } else {
        builder.margin_right(12 + 70);
    }
    Ok(builder.build_cartesian_2d(0f64..x_max, 0f64..y_max)?)
}

/// The legend's sample of a line series.
fn legend_line(color: RGBAColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// The legend box, top right.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crowd::Sample, stats};

    /// A sale at 2 000 answers/s that sells out after 1 s of 3 s, drained at 3.2 s.
    fn sale() -> Stats {
        let samples: Vec<Sample> = (0..6_000u32)
            .map(|i| Sample {
                at_us: i * 500,
                latency_us: 1_000 + i % 700,
                lag_us: 0,
                outcome: if i < 2_000 {
                    Outcome::Accepted
                } else {
                    Outcome::SoldOut
                },
            })
            .collect();
        stats::compute(&samples, &[], false)
    }

    #[test]
    fn a_one_second_sell_out_draws_twenty_points_and_both_marks() {
        let stats = sale();
        let path = std::env::temp_dir().join(format!("seckill-chart-{}.svg", std::process::id()));
        let chart = Chart {
            title: "test",
            stats: &stats,
            stock: &[],
            schedule: None,
            drained_at: Some(3.2),
        };
        chart.render(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("sold out 1.000 s"), "no sell-out mark");
        assert!(svg.contains("drained 3.200 s"), "no drain mark");
        assert!(svg.contains("(10 ms buckets)"));
        // Every bucket of the accepted line before the sell-out is a point.
        let selling = stats.timeline.iter().filter(|b| b.t_secs < 1.0).count();
        assert!(selling >= 20, "{selling} buckets before the sell-out");
        let longest = svg
            .split("<polyline")
            .skip(1)
            .map(|p| {
                p.split("points=\"")
                    .nth(1)
                    .map_or(0, |pts| pts.split(' ').count())
            })
            .max()
            .unwrap_or(0);
        assert!(
            longest >= stats.timeline.len(),
            "longest line has {longest} points"
        );
    }
}
