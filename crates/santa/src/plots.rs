//! The benchmark report's plots, as SVG files.

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use crate::bench::{BenchReport, FindMaxReport};

const SIZE: (u32, u32) = (900, 520);

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

fn fail(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {error}")
}

/// p99 acknowledgement latency (log scale) against offered rate, one line per curve.
pub(crate) fn latency_against_load(
    path: &Path,
    curves: &[(&str, &FindMaxReport)],
) -> anyhow::Result<()> {
    let points: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|(_, report)| {
            crate::suite::p99_points(report)
                .into_iter()
                .map(|(x, y)| (x, y.max(0.01)))
                .collect()
        })
        .collect();
    let max_x = points.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 acknowledgement latency against offered load",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, (0.01..max_y * 2.0).log_scale())
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("offered requests per second")
        .y_desc("p99 latency, ms (log scale)")
        .draw()
        .map_err(fail)?;
    for (i, ((name, _), line)) in curves.iter().zip(&points).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                line.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(fail)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        chart
            .draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
            )
            .map_err(fail)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)
}

/// Each followed letter's projection lag against the time it was acknowledged.
pub(crate) fn lag_over_time(
    path: &Path,
    title: &str,
    runs: &[(&str, &BenchReport)],
) -> anyhow::Result<()> {
    let max_x = runs
        .iter()
        .flat_map(|(_, r)| r.lag_series.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = runs
        .iter()
        .flat_map(|(_, r)| r.lag_series.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.02, 0.0..max_y * 1.1)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run (when the letter was acknowledged)")
        .y_desc("lag until readable, ms")
        .draw()
        .map_err(fail)?;
    for (i, (name, report)) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(
                report
                    .lag_series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 2, colour.filled())),
            )
            .map_err(fail)?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)
}
