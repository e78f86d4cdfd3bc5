//! The benchmark plot: attention time against the number of tokens `N`, and against the
//! in-degree `k` at the largest `N` measured with several `k`, both log-log.
//!
//! [`plot_bench`] writes it (PNG or SVG by the extension), [`render_bench_plot`] returns its
//! pixels. Input: [`BenchPoint`]s, e.g. from [`load_patchgraph_bench`](super::load_patchgraph_bench)
//! and [`load_peer_bench`](super::load_peer_bench) together. The picture is
//! [`BENCH_PLOT_SIZE`] (1280 x 800 px): two 640 x 640 panels side by side over a 160 px legend.
//!
//! - Left, time against `N`: one line per series, a series being a label and a `k` (all points
//!   with that label and `k`, in order of `N`).
//! - Right, time against `k` at `N*`, the largest `N` at which some label has points for two or
//!   more values of `k`: one line per such label. Points of a label without `k` (a dense kernel,
//!   a complete graph) at `N*` are horizontal dashed lines, the level a sparse line must beat.
//!   With `crossover = Some(density)` (the edge density `E / N^2` at which sparse stops being
//!   faster, as `patchgraph bench` measures it), a black dashed vertical line marks
//!   `k = density * N*`, labelled.
//!
//! Colours go by label ([`series_colour`](super::series_colour) in order of first appearance),
//! markers by `k` (a dot for no `k`, then triangle, square, cross, ring for the values of `k`
//! in increasing order); the legend lists both.
//!
//! ```
//! use patchgraph::viz::{BENCH_PLOT_SIZE, BenchPoint, plot_bench, render_bench_plot};
//! let point = |label: &str, n, k, ms| BenchPoint { label: label.into(), n, k, ms };
//! let points = vec![
//!     point("dense dot", 50, None, 0.08),
//!     point("dense dot", 197, None, 1.1),
//!     point("sparse dot", 50, Some(8), 0.05),
//!     point("sparse dot", 197, Some(8), 0.2),
//!     point("sparse dot", 197, Some(16), 0.35),
//! ];
//! let pixels = render_bench_plot(&points, Some(0.25)).unwrap();
//! assert_eq!(pixels.dimensions(), BENCH_PLOT_SIZE);
//! plot_bench(&points, Some(0.25), &std::env::temp_dir().join("patchgraph-doc-bench.svg")).unwrap();
//! // Times are plotted on a log axis: they must be positive.
//! assert!(render_bench_plot(&[point("x", 50, None, 0.0)], None).is_err());
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use ::image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::{
    BLACK, Color, DashedLineSeries, DrawingArea, DrawingBackend, IntoLogRange, LineSeries, RGBColor, Rectangle, WHITE,
};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::Canvas;
use super::chart::{
    Axis, LogLog, Marker, Swatch, draw_axes, draw_legend, log_range, log_ticks, min_max, panel_builder, rgb,
    series_colour,
};
use super::output::{OutputFormat, Picture, Raster, draw_error, render_rgb, save};
use super::text::format_number;
use crate::error::{Error, Result};

/// Width and height of the benchmark plot, in px.
pub const BENCH_PLOT_SIZE: (u32, u32) = (1280, 800);

/// Height of the two panels; the legend fills the rest.
const PANEL_HEIGHT: u32 = 640;

/// One timing: `label` (what ran, e.g. `"dense dot"`, `"sparse gat"`, `"PyTorch SDPA"`,
/// `"PyG GATConv"`), at `n` tokens per image, with in-degree `k` for a sparse graph (`None`
/// for a dense kernel or a complete graph), taking `ms` milliseconds (median).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchPoint {
    /// What ran, without the `k` (the plot adds `k = ...`).
    pub label: String,
    /// Tokens per image `N`.
    pub n: usize,
    /// The graph's in-degree, for a sparse graph.
    pub k: Option<usize>,
    /// Median time, ms.
    pub ms: f64,
}

/// Plots `points` into `path` (`.png` or `.svg`); see the module docs for what is drawn and
/// [`render_bench_plot`] for the errors.
pub fn plot_bench(points: &[BenchPoint], crossover: Option<f64>, path: &Path) -> Result<()> {
    OutputFormat::from_path(path)?;
    save(&BenchPicture::new(points, crossover)?, path)
}

/// The pixels of [`plot_bench`]'s picture ([`BENCH_PLOT_SIZE`]).
///
/// Errors ([`Error::Invalid`]): no points; a time that is not finite and positive, `n` or `k`
/// zero (log axes); a crossover density that is not finite and positive.
pub fn render_bench_plot(points: &[BenchPoint], crossover: Option<f64>) -> Result<RgbImage> {
    render_rgb(&BenchPicture::new(points, crossover)?)
}

/// Points of one line: label index, `k`, `(x, ms)` sorted by `x`.
struct Line {
    label: usize,
    k: Option<usize>,
    points: Vec<(f64, f64)>,
}

struct BenchPicture {
    labels: Vec<String>,
    ks: Vec<usize>,
    by_n: Vec<Line>,
    /// `N*` and the lines at it: against `k` (sparse) and flat (no `k`).
    at_n: Option<(usize, Vec<Line>, Vec<Line>)>,
    crossover: Option<f64>,
}

impl BenchPicture {
    fn new(points: &[BenchPoint], crossover: Option<f64>) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::invalid("bench points", "there is nothing to plot"));
        }
        for (i, p) in points.iter().enumerate() {
            if !(p.ms.is_finite() && p.ms > 0.0) || p.n == 0 || p.k == Some(0) {
                return Err(Error::invalid(
                    format!("bench point {i} ({} at N = {}, k = {:?})", p.label, p.n, p.k),
                    format!("{} ms: times must be finite and positive, N and k at least 1 (log axes)", p.ms),
                ));
            }
        }
        if let Some(d) = crossover {
            if !(d.is_finite() && d > 0.0) {
                return Err(Error::invalid("crossover density", format!("{d} is not finite and positive")));
            }
        }
        let mut labels: Vec<String> = Vec::new();
        for p in points {
            if !labels.contains(&p.label) {
                labels.push(p.label.clone());
            }
        }
        let label_of = |p: &BenchPoint| labels.iter().position(|l| *l == p.label).unwrap_or(0);
        let ks: Vec<usize> = points.iter().filter_map(|p| p.k).collect::<BTreeSet<_>>().into_iter().collect();

        // Left panel: one line per (label, k), in order of first appearance.
        let mut by_n: Vec<Line> = Vec::new();
        for p in points {
            let label = label_of(p);
            let point = (p.n as f64, p.ms);
            match by_n.iter_mut().find(|l| l.label == label && l.k == p.k) {
                Some(line) => line.points.push(point),
                None => by_n.push(Line { label, k: p.k, points: vec![point] }),
            }
        }
        for line in &mut by_n {
            line.points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        }

        // Right panel: the largest N at which one label has two or more k.
        let several_k = |n: usize| {
            (0..labels.len()).any(|label| {
                let ks: BTreeSet<usize> =
                    points.iter().filter(|p| p.n == n && label_of(p) == label).filter_map(|p| p.k).collect();
                ks.len() >= 2
            })
        };
        let n_star = points.iter().map(|p| p.n).filter(|&n| several_k(n)).max();
        let at_n = n_star.map(|n| {
            let (mut sparse, mut flat): (Vec<Line>, Vec<Line>) = (Vec::new(), Vec::new());
            for p in points.iter().filter(|p| p.n == n) {
                let label = label_of(p);
                let (lines, x) = match p.k {
                    Some(k) => (&mut sparse, k as f64),
                    None => (&mut flat, 0.0),
                };
                match lines.iter_mut().find(|l| l.label == label) {
                    Some(line) => line.points.push((x, p.ms)),
                    None => lines.push(Line { label, k: p.k, points: vec![(x, p.ms)] }),
                }
            }
            for line in &mut sparse {
                line.points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            }
            (n, sparse, flat)
        });
        Ok(BenchPicture { labels, ks, by_n, at_n, crossover })
    }

    fn colour(&self, label: usize) -> RGBColor {
        rgb(series_colour(label))
    }

    fn marker(&self, k: Option<usize>) -> Marker {
        match k {
            None => Marker::Dot,
            Some(k) => Marker::nth(1 + self.ks.iter().position(|&x| x == k).unwrap_or(0)),
        }
    }

    fn draw_by_n<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>, panel: &DrawingArea<DB, Shift>) -> Result<()> {
        let all = || self.by_n.iter().flat_map(|l| l.points.iter());
        let (x_lo, x_hi) = min_max(all().map(|p| p.0)).unwrap_or((1.0, 10.0));
        let (y_lo, y_hi) = min_max(all().map(|p| p.1)).unwrap_or((1.0, 10.0));
        let (x_range, y_range) = (log_range(x_lo, x_hi, 1.25), log_range(y_lo, y_hi, 1.5));
        let mut chart: LogLog<'_, DB> = panel_builder(panel)
            .build_cartesian_2d(x_range.clone().log_scale(), y_range.clone().log_scale())
            .map_err(draw_error)?;
        let (x_ticks, x_minor) = log_ticks(&x_range);
        let (y_ticks, y_minor) = log_ticks(&y_range);
        let x = Axis { ticks: x_ticks, minor: x_minor, desc: "N (tokens per image)".into(), label: format_number };
        let y = Axis { ticks: y_ticks, minor: y_minor, desc: "median time (ms)".into(), label: format_number };
        draw_axes(canvas, panel, &chart, "attention time against N (log-log)", &x, &y)?;
        for line in &self.by_n {
            let colour = self.colour(line.label);
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
                .map_err(draw_error)?;
            for p in &line.points {
                self.marker(line.k).draw(canvas.root, chart.backend_coord(p), colour)?;
            }
        }
        Ok(())
    }

    fn draw_by_k<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>, panel: &DrawingArea<DB, Shift>) -> Result<()> {
        let Some((n, sparse, flat)) = &self.at_n else {
            let (xr, yr) = panel.get_pixel_range();
            let frame =
                Rectangle::new([(xr.start + 90, yr.start + 44), (xr.end - 14, yr.end - 66)], BLACK.stroke_width(1));
            canvas.root.draw(&frame).map_err(draw_error)?;
            let centre = ((xr.start + xr.end) / 2, (yr.start + yr.end) / 2);
            return canvas.text("no N was measured with several k", centre, 15, HPos::Center, VPos::Center);
        };
        let crossover_k = self.crossover.map(|d| d * *n as f64);
        let xs = sparse.iter().flat_map(|l| l.points.iter().map(|p| p.0)).chain(crossover_k);
        let (x_lo, x_hi) = min_max(xs).unwrap_or((1.0, 10.0));
        let ys = sparse.iter().chain(flat).flat_map(|l| l.points.iter().map(|p| p.1));
        let (y_lo, y_hi) = min_max(ys).unwrap_or((1.0, 10.0));
        let (x_range, y_range) = (log_range(x_lo, x_hi, 1.3), log_range(y_lo, y_hi, 1.5));
        let mut chart: LogLog<'_, DB> = panel_builder(panel)
            .build_cartesian_2d(x_range.clone().log_scale(), y_range.clone().log_scale())
            .map_err(draw_error)?;
        let (x_ticks, x_minor) = log_ticks(&x_range);
        let (y_ticks, y_minor) = log_ticks(&y_range);
        let x = Axis {
            ticks: x_ticks,
            minor: x_minor,
            desc: "k (in-degree of the sparse graph)".into(),
            label: format_number,
        };
        let y = Axis { ticks: y_ticks, minor: y_minor, desc: "median time (ms)".into(), label: format_number };
        draw_axes(canvas, panel, &chart, &format!("time against k at N = {n} (log-log)"), &x, &y)?;
        for line in flat {
            let colour = self.colour(line.label);
            for &(_, ms) in &line.points {
                let level = [(x_range.start, ms), (x_range.end, ms)];
                chart.draw_series(DashedLineSeries::new(level, 8, 5, colour.stroke_width(2))).map_err(draw_error)?;
            }
        }
        for line in sparse {
            let colour = self.colour(line.label);
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
                .map_err(draw_error)?;
            for p in &line.points {
                self.marker(Some(p.0 as usize)).draw(canvas.root, chart.backend_coord(p), colour)?;
            }
        }
        if let (Some(k), Some(density)) = (crossover_k, self.crossover) {
            let vertical = [(k, y_range.start), (k, y_range.end)];
            chart.draw_series(DashedLineSeries::new(vertical, 10, 6, BLACK.stroke_width(2))).map_err(draw_error)?;
            let (x, y) = chart.backend_coord(&(k, y_range.end));
            // The label on the side of the line with more room, on a white box.
            let right_half = k.ln() > (x_range.start.ln() + x_range.end.ln()) / 2.0;
            let lines =
                [format!("crossover k = {}", format_number(k)), format!("E/N\u{b2} = {}", format_number(density))];
            let (h, x0, x1) = if right_half { (HPos::Right, x - 150, x - 6) } else { (HPos::Left, x + 6, x + 150) };
            canvas.root.draw(&Rectangle::new([(x0, y + 4), (x1, y + 44)], WHITE.filled())).map_err(draw_error)?;
            let tx = if right_half { x - 10 } else { x + 10 };
            for (i, text) in lines.iter().enumerate() {
                canvas.text(text, (tx, y + 14 + 18 * i as i32), 14, h, VPos::Center)?;
            }
        }
        Ok(())
    }

    fn legend_entries(&self) -> Vec<(Swatch, String)> {
        let mut entries: Vec<(Swatch, String)> =
            self.labels.iter().enumerate().map(|(i, l)| (Swatch::Line(self.colour(i)), l.clone())).collect();
        let grey = RGBColor(70, 70, 70);
        if self.by_n.iter().any(|l| l.k.is_none()) {
            entries.push((Swatch::Marker(Marker::Dot, grey), "no k (dense / complete)".into()));
        }
        for &k in &self.ks {
            entries.push((Swatch::Marker(self.marker(Some(k)), grey), format!("k = {k}")));
        }
        if let Some((n, _, flat)) = &self.at_n {
            if !flat.is_empty() {
                entries.push((Swatch::Dashed(grey), format!("no-k time at N = {n} (right)")));
            }
            if let Some(d) = self.crossover {
                entries.push((Swatch::Dashed(BLACK), format!("crossover, E/N\u{b2} = {}", format_number(d))));
            }
        }
        entries
    }
}

impl Picture for BenchPicture {
    fn size(&self) -> (u32, u32) {
        BENCH_PLOT_SIZE
    }

    fn raster(&self) -> Option<&Raster> {
        None
    }

    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        let (panels, _) = canvas.root.split_vertically(PANEL_HEIGHT);
        let (left, right) = panels.split_horizontally(BENCH_PLOT_SIZE.0 / 2);
        self.draw_by_n(canvas, &left)?;
        self.draw_by_k(canvas, &right)?;
        let (w, h) = (BENCH_PLOT_SIZE.0 as i32, BENCH_PLOT_SIZE.1 as i32);
        draw_legend(canvas, ((24, PANEL_HEIGHT as i32 + 6), (w - 12, h - 8)), 250, &self.legend_entries())
    }
}
