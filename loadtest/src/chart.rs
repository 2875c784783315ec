//! The SVG chart: requests/s by outcome with p99 latency on a second axis
//! (top), and stock left / orders pending over time (bottom).

use std::path::Path;

use anyhow::anyhow;
use plotters::{coord::Shift, prelude::*};

use crate::{api::Outcome, stats::Stats, stock::StockPoint};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 900;

/// A line of the stock panel: label, colour, and the figure it plots.
type StockSeries = (&'static str, RGBAColor, fn(&StockPoint) -> i64);
/// One panel of the chart.
type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws the chart of a run into `path`.
pub fn render(path: &Path, title: &str, stats: &Stats, stock: &[StockPoint]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(HEIGHT * 3 / 5);

    let secs = stats.timeline.len().max(1) as f64;
    let x_max = stock.iter().map(|p| p.t_secs).fold(secs, f64::max).max(1.0);
    draw_rates(&top, title, stats, x_max)?;
    draw_stock(&bottom, stock, x_max)?;

    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Requests/s by outcome, and p99 latency on the right axis.
fn draw_rates(panel: &Panel<'_>, title: &str, stats: &Stats, x_max: f64) -> anyhow::Result<()> {
    // Per-second rates; the last bucket is usually partial, so divide by its width.
    let rate = |n: u64, width: f64| n as f64 / width;
    let rps_max = stats
        .timeline
        .iter()
        .map(|s| rate(s.total, s.width_secs))
        .fold(1.0, f64::max)
        * 1.1;
    let p99_max = stats
        .timeline
        .iter()
        .map(|s| s.p99_ms)
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!("{title}: requests/s by outcome, p99 latency"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..rps_max)?
        .set_secondary_coord(0f64..x_max, 0f64..p99_max);
    chart
        .configure_mesh()
        .x_desc("seconds since the sale started")
        .y_desc("requests / s")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 latency (ms)")
        .draw()?;

    let mut drawn = 0;
    for (i, outcome) in Outcome::ALL.iter().enumerate() {
        let label = outcome.label();
        if !stats.outcomes.contains_key(label) {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let points = stats.timeline.iter().map(|s| {
            (
                f64::from(s.t) + s.width_secs / 2.0,
                rate(s.by_outcome.get(label).copied().unwrap_or(0), s.width_secs),
            )
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(legend_line(color));
        drawn += 1;
    }
    let p99 = stats
        .timeline
        .iter()
        .filter(|s| s.total > 0)
        .map(|s| (f64::from(s.t) + s.width_secs / 2.0, s.p99_ms));
    chart
        .draw_secondary_series(LineSeries::new(p99, BLACK.stroke_width(2)))?
        .label("p99 latency (ms, right axis)")
        .legend(legend_line(BLACK.to_rgba()));
    if drawn > 0 {
        draw_legend(&mut chart)?;
    }
    Ok(())
}

/// Stock left, units sold and orders pending, as polled.
fn draw_stock(panel: &Panel<'_>, stock: &[StockPoint], x_max: f64) -> anyhow::Result<()> {
    let stock_max = stock
        .iter()
        .map(|p| p.stock_left.max(p.pending).max(p.sold))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption(
            "stock left, sold and orders pending (polled once a second)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..stock_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the sale started")
        .y_desc("units / orders")
        .draw()?;
    let series: [StockSeries; 3] = [
        ("stock left", BLUE.to_rgba(), |p| p.stock_left),
        ("sold (persisted)", GREEN.to_rgba(), |p| p.sold),
        ("pending", RED.to_rgba(), |p| p.pending),
    ];
    for (label, color, value) in series {
        let points = stock
            .iter()
            .filter(|p| p.t_secs >= 0.0)
            .map(move |p| (p.t_secs, value(p) as f64));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(legend_line(color));
    }
    draw_legend(&mut chart)
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
