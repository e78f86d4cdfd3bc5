//! Training curves: loss and accuracy against the epoch, for one run or several overlaid.
//!
//! [`plot_training`] writes the plot (PNG or SVG by the extension), [`render_training_plot`]
//! returns its pixels, [`load_training_metrics`] reads the `metrics.json` that
//! `patchgraph train` writes (a JSON array of [`crate::train::EpochMetrics`]).
//!
//! The picture is [`TRAINING_PLOT_SIZE`] (1200 x 600 px): the title on top, two 600 x 480
//! panels side by side (left: loss, from 0; right: accuracy, from 0 to 1, or to the maximum
//! if some value exceeds 1, e.g. percentages), a legend strip under them. Run `i` gets
//! [`series_colour`](super::series_colour)`(i)`; training values are solid lines with dots,
//! test values dashed lines with rings. A NaN or infinite value (a diverged run: `metrics.json`
//! stores NaN as `null`) is left out, and the line breaks there.
//!
//! ```
//! use patchgraph::viz::{TRAINING_PLOT_SIZE, TrainingPoint, plot_training, render_training_plot};
//! let epoch = |e, loss: f64, acc| TrainingPoint {
//!     epoch: e, train_loss: loss, test_loss: loss * 1.1, train_accuracy: acc, test_accuracy: acc - 0.02,
//! };
//! let runs = vec![
//!     ("complete".to_string(), vec![epoch(1, 1.2, 0.6), epoch(2, 0.7, 0.8), epoch(3, 0.5, 0.86)]),
//!     ("grid8".to_string(), vec![epoch(1, 1.4, 0.5), epoch(2, 0.9, 0.72), epoch(3, 0.6, 0.81)]),
//! ];
//! let pixels = render_training_plot(&runs, "ViT on MNIST").unwrap();
//! assert_eq!(pixels.dimensions(), TRAINING_PLOT_SIZE);
//! plot_training(&runs, "ViT on MNIST", &std::env::temp_dir().join("patchgraph-doc-training.png")).unwrap();
//! ```

use std::path::Path;

use ::image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::{Color, DashedLineSeries, DrawingArea, DrawingBackend, LineSeries, RGBColor};
use plotters::style::text_anchor::{HPos, VPos};
use serde::Deserialize;

use super::canvas::Canvas;
use super::chart::{
    Axis, Linear, Marker, Swatch, draw_axes, draw_legend, linear_ticks, min_max, panel_builder, rgb, series_colour,
};
use super::output::{OutputFormat, Picture, Raster, draw_error, render_rgb, save};
use super::text::format_number;
use crate::error::{Error, Result};

/// Width and height of the training plot, in px.
pub const TRAINING_PLOT_SIZE: (u32, u32) = (1200, 600);

/// Height of the title strip and of the panels; the legend fills the rest.
const TITLE_HEIGHT: u32 = 40;
const PANEL_HEIGHT: u32 = 480;

/// One epoch of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainingPoint {
    /// The epoch (1-based in `metrics.json`).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Training accuracy (a fraction in `[0, 1]` in `metrics.json`).
    pub train_accuracy: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
}

/// Plots `runs` (a label and its epochs each) into `path` (`.png` or `.svg`) under `title`; see
/// the module docs for the picture and [`render_training_plot`] for the errors.
pub fn plot_training(runs: &[(String, Vec<TrainingPoint>)], title: &str, path: &Path) -> Result<()> {
    OutputFormat::from_path(path)?;
    save(&TrainingPicture::new(runs, title)?, path)
}

/// The pixels of [`plot_training`]'s picture ([`TRAINING_PLOT_SIZE`]).
///
/// Errors ([`Error::Invalid`]) if no run has an epoch to plot.
pub fn render_training_plot(runs: &[(String, Vec<TrainingPoint>)], title: &str) -> Result<RgbImage> {
    render_rgb(&TrainingPicture::new(runs, title)?)
}

#[derive(Deserialize)]
struct RawEpoch {
    epoch: usize,
    #[serde(default)]
    train_loss: Option<f64>,
    #[serde(default)]
    test_loss: Option<f64>,
    #[serde(default)]
    train_accuracy: Option<f64>,
    #[serde(default)]
    test_accuracy: Option<f64>,
}

/// Reads a `metrics.json` written by `patchgraph train`: a JSON array of objects with `epoch`
/// and the four metrics (other fields, such as `lr`, are ignored). A metric that is `null`
/// (how NaN is stored) or missing becomes NaN, which the plot leaves out.
///
/// Errors: [`Error::Io`] if the file cannot be read; [`Error::Format`] (naming the file and the
/// entry) if it is not such an array or an entry has no integer `epoch`.
pub fn load_training_metrics(path: &Path) -> Result<Vec<TrainingPoint>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let malformed = |reason: String| Error::Format { path: path.display().to_string(), reason };
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| malformed(format!("not a metrics.json (a JSON array of epochs): {e}")))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let e: RawEpoch = serde_json::from_value(value).map_err(|e| malformed(format!("epoch entry {i}: {e}")))?;
            let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
            Ok(TrainingPoint {
                epoch: e.epoch,
                train_loss: or_nan(e.train_loss),
                test_loss: or_nan(e.test_loss),
                train_accuracy: or_nan(e.train_accuracy),
                test_accuracy: or_nan(e.test_accuracy),
            })
        })
        .collect()
}

/// The runs of consecutive finite points of `values` (x, y): a NaN breaks the line.
fn finite_runs(values: impl Iterator<Item = (f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (x, y) in values {
        if y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((x, y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

struct TrainingPicture<'a> {
    runs: &'a [(String, Vec<TrainingPoint>)],
    title: &'a str,
}

/// Which metric a panel shows.
#[derive(Clone, Copy)]
enum Metric {
    Loss,
    Accuracy,
}

impl Metric {
    fn values(self, p: &TrainingPoint) -> (f64, f64) {
        match self {
            Metric::Loss => (p.train_loss, p.test_loss),
            Metric::Accuracy => (p.train_accuracy, p.test_accuracy),
        }
    }
}

impl<'a> TrainingPicture<'a> {
    fn new(runs: &'a [(String, Vec<TrainingPoint>)], title: &'a str) -> Result<Self> {
        if runs.iter().all(|(_, points)| points.is_empty()) {
            return Err(Error::invalid("training runs", "there is no epoch to plot"));
        }
        Ok(TrainingPicture { runs, title })
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        canvas: &Canvas<'_, DB>,
        panel: &DrawingArea<DB, Shift>,
        metric: Metric,
    ) -> Result<()> {
        let points = || self.runs.iter().flat_map(|(_, p)| p.iter());
        let (e_lo, e_hi) = min_max(points().map(|p| p.epoch as f64)).unwrap_or((0.0, 1.0));
        // A little room beyond the first and last epochs, so that their markers are whole.
        let x_range = if e_lo < e_hi {
            let pad = ((e_hi - e_lo) * 0.03).max(0.25);
            e_lo - pad..e_hi + pad
        } else {
            e_lo - 1.0..e_hi + 1.0
        };
        let values = points().flat_map(|p| {
            let (a, b) = metric.values(p);
            [a, b]
        });
        let y_max = min_max(values.filter(|v| v.is_finite())).map_or(1.0, |(_, hi)| hi);
        let y_top = match metric {
            Metric::Accuracy if y_max <= 1.0 => 1.0,
            _ if y_max > 0.0 => y_max * 1.05,
            _ => 1.0,
        };
        let y_range = 0.0..y_top;
        let (caption, y_desc) = match metric {
            Metric::Loss => ("loss", "loss"),
            Metric::Accuracy => ("accuracy", "accuracy"),
        };
        let mut chart: Linear<'_, DB> =
            panel_builder(panel).build_cartesian_2d(x_range.clone(), y_range.clone()).map_err(draw_error)?;
        let x = Axis {
            ticks: linear_ticks(&x_range, 8, 1.0),
            minor: Vec::new(),
            desc: "epoch".into(),
            label: format_number,
        };
        let y = Axis {
            ticks: linear_ticks(&y_range, 6, 0.0),
            minor: Vec::new(),
            desc: y_desc.into(),
            label: format_number,
        };
        draw_axes(canvas, panel, &chart, caption, &x, &y)?;
        for (i, (_, epochs)) in self.runs.iter().enumerate() {
            let colour = rgb(series_colour(i));
            let style = colour.stroke_width(2);
            let train = finite_runs(epochs.iter().map(|p| (p.epoch as f64, metric.values(p).0)));
            let test = finite_runs(epochs.iter().map(|p| (p.epoch as f64, metric.values(p).1)));
            for run in &train {
                chart.draw_series(LineSeries::new(run.iter().copied(), style)).map_err(draw_error)?;
                for p in run {
                    Marker::Dot.draw(canvas.root, chart.backend_coord(p), colour)?;
                }
            }
            for run in &test {
                chart.draw_series(DashedLineSeries::new(run.iter().copied(), 8, 5, style)).map_err(draw_error)?;
                for p in run {
                    Marker::Ring.draw(canvas.root, chart.backend_coord(p), colour)?;
                }
            }
        }
        Ok(())
    }
}

impl Picture for TrainingPicture<'_> {
    fn size(&self) -> (u32, u32) {
        TRAINING_PLOT_SIZE
    }

    fn raster(&self) -> Option<&Raster> {
        None
    }

    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        let (w, h) = (TRAINING_PLOT_SIZE.0 as i32, TRAINING_PLOT_SIZE.1 as i32);
        canvas.text(self.title, (w / 2, TITLE_HEIGHT as i32 / 2 + 4), 20, HPos::Center, VPos::Center)?;
        let (_, below) = canvas.root.split_vertically(TITLE_HEIGHT);
        let (panels, _) = below.split_vertically(PANEL_HEIGHT);
        let (left, right) = panels.split_horizontally(TRAINING_PLOT_SIZE.0 / 2);
        self.draw_panel(canvas, &left, Metric::Loss)?;
        self.draw_panel(canvas, &right, Metric::Accuracy)?;
        let grey = RGBColor(70, 70, 70);
        let mut entries: Vec<(Swatch, String)> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, (label, _))| (Swatch::Line(rgb(series_colour(i))), label.clone()))
            .collect();
        entries.push((Swatch::Line(grey), "train (solid line, dots)".into()));
        entries.push((Swatch::Dashed(grey), "test (dashed line, rings)".into()));
        let top = (TITLE_HEIGHT + PANEL_HEIGHT) as i32 + 6;
        draw_legend(canvas, ((24, top), (w - 12, h - 8)), 280, &entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_breaks_a_line_into_runs() {
        let ys = [1.0, f64::NAN, 2.0, 3.0, f64::INFINITY, f64::NAN];
        let runs = finite_runs(ys.iter().enumerate().map(|(i, &y)| (i as f64, y)));
        assert_eq!(runs, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        assert!(finite_runs([(0.0, f64::NAN)].into_iter()).is_empty());
    }
}
