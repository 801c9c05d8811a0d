//! An SVG picture of a burst: throughput and latency percentiles over time (plotters), per
//! tenth of a second for short bursts so a sub-second run still draws lines.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One point of the chart: rates per second over a slice of the burst starting `at` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub at: f64,
    pub attempts_per_second: f64,
    pub reserved_per_second: f64,
    pub errors_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A line of a chart: its legend, colour and value at a point.
type Line = (&'static str, RGBColor, fn(&Point) -> f64);

/// Draws `series` into an SVG file at `path`: attempts, reservations and errors per second
/// above, p50 and p99 latency (ms) below.
pub fn render(series: &[Point], title: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(300);
    let rates: [Line; 3] = [
        ("attempts/s", BLUE, |s| s.attempts_per_second),
        ("reserved/s", GREEN, |s| s.reserved_per_second),
        ("errors/s", RED, |s| s.errors_per_second),
    ];
    panel(&top, "per second", series, &rates)?;
    let latency: [Line; 2] = [("p50", BLUE, |s| s.p50_ms), ("p99", MAGENTA, |s| s.p99_ms)];
    panel(&bottom, "latency (ms)", series, &latency)?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// One chart of `lines` over the seconds of `series`, with a legend.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    series: &[Point],
    lines: &[Line],
) -> anyhow::Result<()> {
    let step = match series {
        [first, second, ..] => second.at - first.at,
        _ => 1.0,
    };
    let seconds = series.last().map_or(1.0, |p| p.at + step).max(step);
    let top = series
        .iter()
        .flat_map(|s| lines.iter().map(move |(_, _, pick)| pick(s)))
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..top * 1.1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for &(label, color, pick) in lines {
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.at, pick(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
