//! An SVG picture of a burst: throughput and latency percentiles per second (plotters).

use crate::Second;
use plotters::prelude::*;
use std::path::Path;

/// Draws `series` into an SVG file at `path`: attempts, reservations and errors per second
/// above, p50 and p99 latency (ms) below.
pub fn render(series: &[Second], title: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(300);
    let seconds = series.len().max(1) as u64;
    let most = series.iter().map(|s| s.attempts).max().unwrap_or(1).max(1);
    let mut rates = ChartBuilder::on(&top)
        .caption("per second", ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..seconds, 0u64..most + most / 10)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    rates
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (label, color, pick) in [
        (
            "attempts/s",
            BLUE,
            (|s: &Second| s.attempts) as fn(&Second) -> u64,
        ),
        ("reserved/s", GREEN, |s: &Second| s.reserved),
        ("errors/s", RED, |s: &Second| s.errors),
    ] {
        rates
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.second, pick(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    rates
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let slowest = series.iter().map(|s| s.p99_ms).fold(1.0_f64, f64::max);
    let mut latency = ChartBuilder::on(&bottom)
        .caption("latency (ms)", ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..seconds, 0f64..slowest * 1.1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (label, color, pick) in [
        ("p50", BLUE, (|s: &Second| s.p50_ms) as fn(&Second) -> f64),
        ("p99", MAGENTA, |s: &Second| s.p99_ms),
    ] {
        latency
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.second, pick(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
