//! SVG plots for the report: ratio-to-native bars and latency CDFs.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Fixed colour per backend position, so a backend keeps its colour across plots of a run; one
/// per backend there is, so a run of all of them has no two alike.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

pub fn backend_colour(backend_index: usize) -> RGBColor {
    PALETTE[backend_index % PALETTE.len()]
}

/// One horizontal bar of a ratio chart.
pub struct RatioBar {
    pub label: String,
    pub backend_index: usize,
    pub ratio: f64,
}

/// Horizontal bars, first bar on top (labels stay readable however many jobs there are), with
/// a line at 1.0 = native.
pub fn ratio_bars(path: &Path, title: &str, axis: &str, bars: &[RatioBar]) -> Result<()> {
    let rows = i32::try_from(bars.len())?;
    let height = 120 + 22 * bars.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let x_max = bars.iter().map(|bar| bar.ratio).fold(1.2_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(300)
        // plotters' integer ranges include their end: rows - 1 gives one segment per bar.
        .build_cartesian_2d(0.0..x_max, (0..(rows - 1).max(1)).into_segmented())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(axis)
        .y_labels(bars.len())
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(row) => usize::try_from(rows - 1 - *row)
                .ok()
                .and_then(|i| bars.get(i))
                .map_or(String::new(), |bar| bar.label.clone()),
            _ => String::new(),
        })
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().zip((0..rows).rev()).map(|(bar, row)| {
            let mut rectangle = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (bar.ratio, SegmentValue::Exact(row + 1)),
                ],
                backend_colour(bar.backend_index).filled(),
            );
            rectangle.set_margin(3, 3, 0, 0);
            rectangle
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().zip((0..rows).rev()).map(|(bar, row)| {
            let position = (bar.ratio, SegmentValue::CenterOf(row));
            Text::new(
                format!(" {:.2}", bar.ratio),
                position,
                TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(rows))],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// One line of a CDF chart: (percentile, latency in µs) points.
pub struct CdfSeries {
    pub label: String,
    pub backend_index: usize,
    pub stroke: Stroke,
    pub points: Vec<(f64, f64)>,
}

/// Line pattern, telling apart operations of one backend (which share its colour).
#[derive(Clone, Copy)]
pub enum Stroke {
    Solid,
    Dashed,
    Dotted,
}

/// Latency CDF with a logarithmic latency axis (tails span orders of magnitude).
pub fn latency_cdf(path: &Path, title: &str, series: &[CdfSeries]) -> Result<()> {
    let latencies = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, us)| us))
        .filter(|&us| us > 0.0);
    let (low, high) = latencies.fold((f64::MAX, f64::MIN), |(lo, hi), us| (lo.min(us), hi.max(us)));
    if low > high {
        return Err(anyhow!("no latency points to plot for {title}"));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((low * 0.8..high * 1.25).log_scale(), 0.0..100.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .x_label_formatter(&|us| format!("{us:.0}"))
        .y_desc("percentile")
        .draw()
        .map_err(plot_error)?;
    for line in series {
        let colour = backend_colour(line.backend_index);
        let points = line.points.iter().map(|&(p, us)| (us, p));
        let style = colour.stroke_width(2);
        let drawn = match line.stroke {
            Stroke::Solid => chart.draw_series(LineSeries::new(points, style)),
            Stroke::Dashed => chart.draw_series(DashedLineSeries::new(points, 8, 4, style)),
            Stroke::Dotted => chart.draw_series(DashedLineSeries::new(points, 2, 3, style)),
        };
        drawn
            .map_err(plot_error)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

/// plotters' errors borrow the backend; keep only the message.
fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting failed: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_has_a_colour_of_its_own() {
        let colours: Vec<RGBColor> = (0..crate::backend::AVAILABLE.len()).map(backend_colour).collect();
        for (i, colour) in colours.iter().enumerate() {
            assert!(!colours[..i].contains(colour), "backend {i} reuses a colour");
        }
    }

    #[test]
    fn ratio_bars_write_an_svg_with_labels() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bars.svg");
        let bars = [
            RatioBar {
                label: "randread-psync-qd1-j1 bindfs".into(),
                backend_index: 1,
                ratio: 0.62,
            },
            RatioBar {
                label: "commit-fdatasync-j1 bindfs".into(),
                backend_index: 1,
                ratio: 0.91,
            },
        ];
        ratio_bars(&path, "IOPS relative to native", "× native", &bars)?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("randread-psync-qd1-j1 bindfs"));
        Ok(())
    }

    #[test]
    fn latency_cdf_writes_an_svg_with_a_legend() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cdf.svg");
        let series = [
            CdfSeries {
                label: "native read".into(),
                backend_index: 0,
                stroke: Stroke::Solid,
                points: vec![(50.0, 80.0), (99.0, 300.0)],
            },
            CdfSeries {
                label: "bindfs write".into(),
                backend_index: 1,
                stroke: Stroke::Dotted,
                points: vec![(50.0, 120.0), (99.9, 2000.0)],
            },
        ];
        latency_cdf(&path, "randrw", &series)?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.contains("native read") && svg.contains("bindfs write"));
        assert!(latency_cdf(&path, "empty", &[]).is_err());
        Ok(())
    }
}
