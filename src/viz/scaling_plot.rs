//! Scaling plots: several quantities against the number of tokens `N`, one panel each, side by
//! side, one line per method. The small-patch experiment draws training time per image and
//! test accuracy; the efficient-attention sweep draws forward and forward + backward time.
//!
//! [`plot_scaling`] writes the picture (PNG or SVG by the extension), [`render_scaling_plot`]
//! returns its pixels. The picture is [`SCALING_PANEL_WIDTH`] px wide per panel and
//! [`SCALING_PLOT_HEIGHT`] px high: the title on top, the panels, a legend strip under them.
//! The `N` axis is logarithmic in every panel; each panel's value axis is logarithmic or linear
//! ([`Scale`]; a linear axis starts at 0). Method `i` (in order of first appearance over all
//! panels) gets [`series_colour`](super::series_colour)`(i)` and marker `i` in every panel, so
//! a method looks the same everywhere. A point whose value is missing (a case over budget) is
//! simply absent: its line breaks there.
//!
//! ```
//! use patchgraph::viz::{Scale, ScalingPanel, ScalingPoint, render_scaling_plot, SCALING_PLOT_HEIGHT};
//! let p = |method: &str, n, value| ScalingPoint { method: method.into(), n, value };
//! let time = ScalingPanel {
//!     caption: "forward time".into(),
//!     value: "ms".into(),
//!     scale: Scale::Log,
//!     points: vec![p("dense", 197, 1.0), p("dense", 3137, 180.0), p("window", 197, 0.9), p("window", 3137, 16.0)],
//! };
//! let accuracy = ScalingPanel {
//!     caption: "test accuracy".into(),
//!     value: "%".into(),
//!     scale: Scale::Linear,
//!     points: vec![p("dense", 197, 91.0), p("window", 197, 92.5)],
//! };
//! let pixels = render_scaling_plot("one layer", &[time, accuracy]).unwrap();
//! assert_eq!(pixels.dimensions(), (2 * 640, SCALING_PLOT_HEIGHT));
//! ```

use std::path::Path;

use ::image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::{Color, DrawingArea, DrawingBackend, IntoLogRange, LineSeries};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::Canvas;
use super::chart::{
    Axis, Linear, LogLog, Marker, Swatch, draw_axes, draw_legend, linear_ticks, log_range, log_ticks, min_max,
    panel_builder, rgb, series_colour,
};
use super::output::{OutputFormat, Picture, Raster, draw_error, render_rgb, save};
use super::text::format_number;
use crate::error::{Error, Result};

/// Maps a data point (N, value) to the backend pixel it is drawn at.
type ToPixel<'a> = &'a dyn Fn(&(f64, f64)) -> (i32, i32);

/// Width of one panel, px.
pub const SCALING_PANEL_WIDTH: u32 = 640;
/// Height of the whole picture, px.
pub const SCALING_PLOT_HEIGHT: u32 = 760;

/// Height of the title strip and of the panels; the legend fills the rest.
const TITLE_HEIGHT: u32 = 40;
const PANEL_HEIGHT: u32 = 560;

/// How a panel's value axis is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Logarithmic (values must be positive).
    Log,
    /// Linear, from 0.
    Linear,
}

/// One value of one method at `n` tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingPoint {
    /// The method (one line per method).
    pub method: String,
    /// Tokens `N`.
    pub n: usize,
    /// The value.
    pub value: f64,
}

/// One panel: its caption, the value axis's description and scale, and its points.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingPanel {
    /// Drawn above the panel.
    pub caption: String,
    /// The value axis's description (e.g. `"ms per image and epoch"`).
    pub value: String,
    /// Log or linear value axis.
    pub scale: Scale,
    /// The points, any order.
    pub points: Vec<ScalingPoint>,
}

/// Plots `panels` under `title` into `path` (`.png` or `.svg`); errors as [`render_scaling_plot`].
pub fn plot_scaling(title: &str, panels: &[ScalingPanel], path: &Path) -> Result<()> {
    OutputFormat::from_path(path)?;
    save(&ScalingPicture::new(title, panels)?, path)
}

/// The pixels of [`plot_scaling`]'s picture.
///
/// Errors ([`Error::Invalid`]): no panel, or more than 4; a panel without points; `n = 0`; a
/// value that is not finite, or not positive on a log axis (negative on a linear one).
pub fn render_scaling_plot(title: &str, panels: &[ScalingPanel]) -> Result<RgbImage> {
    render_rgb(&ScalingPicture::new(title, panels)?)
}

struct ScalingPicture<'a> {
    title: &'a str,
    panels: &'a [ScalingPanel],
    methods: Vec<String>,
}

impl<'a> ScalingPicture<'a> {
    fn new(title: &'a str, panels: &'a [ScalingPanel]) -> Result<Self> {
        if panels.is_empty() || panels.len() > 4 {
            return Err(Error::invalid("scaling plot", format!("{} panels: between 1 and 4 fit", panels.len())));
        }
        let mut methods: Vec<String> = Vec::new();
        for panel in panels {
            if panel.points.is_empty() {
                return Err(Error::invalid(format!("scaling panel `{}`", panel.caption), "it has no point"));
            }
            for p in &panel.points {
                let ok = p.value.is_finite()
                    && match panel.scale {
                        Scale::Log => p.value > 0.0,
                        Scale::Linear => p.value >= 0.0,
                    };
                if !ok || p.n == 0 {
                    return Err(Error::invalid(
                        format!("scaling panel `{}`: {} at N = {}", panel.caption, p.method, p.n),
                        format!("value {}: N must be at least 1, values finite (positive on a log axis)", p.value),
                    ));
                }
                if !methods.contains(&p.method) {
                    methods.push(p.method.clone());
                }
            }
        }
        Ok(ScalingPicture { title, panels, methods })
    }

    /// Each method's points of `panel`, sorted by `N`.
    fn lines(&self, panel: &ScalingPanel) -> Vec<(usize, Vec<(f64, f64)>)> {
        let mut lines: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
        for p in &panel.points {
            let m = self.methods.iter().position(|x| *x == p.method).unwrap_or(0);
            let point = (p.n as f64, p.value);
            match lines.iter_mut().find(|(i, _)| *i == m) {
                Some((_, points)) => points.push(point),
                None => lines.push((m, vec![point])),
            }
        }
        for (_, points) in &mut lines {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        lines
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        canvas: &Canvas<'_, DB>,
        area: &DrawingArea<DB, Shift>,
        panel: &ScalingPanel,
    ) -> Result<()> {
        let lines = self.lines(panel);
        let (x_lo, x_hi) = min_max(panel.points.iter().map(|p| p.n as f64)).unwrap_or((1.0, 10.0));
        let (y_lo, y_hi) = min_max(panel.points.iter().map(|p| p.value)).unwrap_or((1.0, 10.0));
        let x_range = log_range(x_lo, x_hi, 1.25);
        let (x_ticks, x_minor) = log_ticks(&x_range);
        let x = Axis { ticks: x_ticks, minor: x_minor, desc: "N (tokens per image)".into(), label: format_number };
        let draw_markers = |backend_coord: ToPixel<'_>| -> Result<()> {
            for (m, points) in &lines {
                for p in points {
                    Marker::nth(*m).draw(canvas.root, backend_coord(p), rgb(series_colour(*m)))?;
                }
            }
            Ok(())
        };
        let caption = format!("{} (log N)", panel.caption);
        match panel.scale {
            Scale::Log => {
                let y_range = log_range(y_lo, y_hi, 1.5);
                let mut chart: LogLog<'_, DB> = panel_builder(area)
                    .build_cartesian_2d(x_range.clone().log_scale(), y_range.clone().log_scale())
                    .map_err(draw_error)?;
                let (y_ticks, y_minor) = log_ticks(&y_range);
                let y = Axis { ticks: y_ticks, minor: y_minor, desc: panel.value.clone(), label: format_number };
                draw_axes(canvas, area, &chart, &caption, &x, &y)?;
                for (m, points) in &lines {
                    let style = rgb(series_colour(*m)).stroke_width(2);
                    chart.draw_series(LineSeries::new(points.iter().copied(), style)).map_err(draw_error)?;
                }
                draw_markers(&|p| chart.backend_coord(p))
            }
            Scale::Linear => {
                let top = if y_hi > 0.0 { y_hi * 1.08 } else { 1.0 };
                let y_range = 0.0..top;
                // The N axis stays logarithmic: a linear chart over ln N, labelled in N.
                let ln_range = x_range.start.ln()..x_range.end.ln();
                let mut chart: Linear<'_, DB> =
                    panel_builder(area).build_cartesian_2d(ln_range, y_range.clone()).map_err(draw_error)?;
                let ln_axis = Axis {
                    ticks: x.ticks.iter().map(|v| v.ln()).collect(),
                    minor: x.minor.iter().map(|v| v.ln()).collect(),
                    desc: x.desc.clone(),
                    label: |ln_n| format_number(ln_n.exp().round()),
                };
                let y = Axis {
                    ticks: linear_ticks(&y_range, 6, 0.0),
                    minor: Vec::new(),
                    desc: panel.value.clone(),
                    label: format_number,
                };
                draw_axes(canvas, area, &chart, &caption, &ln_axis, &y)?;
                let ln = |points: &[(f64, f64)]| points.iter().map(|&(n, v)| (n.ln(), v)).collect::<Vec<_>>();
                for (m, points) in &lines {
                    let style = rgb(series_colour(*m)).stroke_width(2);
                    chart.draw_series(LineSeries::new(ln(points), style)).map_err(draw_error)?;
                }
                draw_markers(&|&(n, v)| chart.backend_coord(&(n.ln(), v)))
            }
        }
    }
}

impl Picture for ScalingPicture<'_> {
    fn size(&self) -> (u32, u32) {
        (SCALING_PANEL_WIDTH * self.panels.len() as u32, SCALING_PLOT_HEIGHT)
    }

    fn raster(&self) -> Option<&Raster> {
        None
    }

    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        let (w, h) = (self.size().0 as i32, SCALING_PLOT_HEIGHT as i32);
        canvas.text(self.title, (w / 2, TITLE_HEIGHT as i32 / 2 + 4), 20, HPos::Center, VPos::Center)?;
        let (_, below) = canvas.root.split_vertically(TITLE_HEIGHT);
        let (panels, _) = below.split_vertically(PANEL_HEIGHT);
        let mut rest = panels;
        for panel in self.panels {
            let (area, right) = rest.split_horizontally(SCALING_PANEL_WIDTH);
            self.draw_panel(canvas, &area, panel)?;
            rest = right;
        }
        let entries: Vec<(Swatch, String)> =
            self.methods.iter().enumerate().map(|(i, m)| (Swatch::Line(rgb(series_colour(i))), m.clone())).collect();
        let top = (TITLE_HEIGHT + PANEL_HEIGHT) as i32 + 6;
        draw_legend(canvas, ((24, top), (w - 12, h - 8)), 300, &entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(scale: Scale, points: Vec<(&str, usize, f64)>) -> ScalingPanel {
        ScalingPanel {
            caption: "c".into(),
            value: "v".into(),
            scale,
            points: points.into_iter().map(|(m, n, value)| ScalingPoint { method: m.into(), n, value }).collect(),
        }
    }

    #[test]
    fn bad_panels_are_typed_errors_and_good_ones_render() {
        let good = panel(Scale::Log, vec![("a", 17, 0.1), ("a", 785, 3.0), ("b", 17, 0.2)]);
        let pixels = render_scaling_plot("t", std::slice::from_ref(&good)).unwrap();
        assert_eq!(pixels.dimensions(), (SCALING_PANEL_WIDTH, SCALING_PLOT_HEIGHT));
        let linear = panel(Scale::Linear, vec![("a", 17, 0.0), ("b", 785, 97.0)]);
        assert!(render_scaling_plot("t", &[good.clone(), linear]).is_ok());
        for bad in [
            panel(Scale::Log, vec![("a", 17, 0.0)]),
            panel(Scale::Linear, vec![("a", 17, -1.0)]),
            panel(Scale::Log, vec![("a", 0, 1.0)]),
            panel(Scale::Linear, vec![("a", 17, f64::NAN)]),
            panel(Scale::Log, vec![]),
        ] {
            assert!(matches!(render_scaling_plot("t", &[bad]), Err(Error::Invalid { .. })));
        }
        assert!(render_scaling_plot("t", &[]).is_err());
        assert!(render_scaling_plot("t", &vec![good; 5]).is_err());
    }

    #[test]
    fn methods_keep_one_colour_across_panels() {
        // The second panel lists b first; b is still method 1 (its first appearance overall).
        let panels = [
            panel(Scale::Log, vec![("a", 17, 1.0), ("b", 17, 2.0)]),
            panel(Scale::Linear, vec![("b", 17, 50.0), ("a", 17, 60.0)]),
        ];
        let picture = ScalingPicture::new("t", &panels).unwrap();
        assert_eq!(picture.methods, vec!["a".to_string(), "b".to_string()]);
        let lines = picture.lines(&panels[1]);
        assert_eq!(lines.iter().map(|(m, _)| *m).collect::<Vec<_>>(), vec![1, 0]);
    }
}
