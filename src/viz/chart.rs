//! What the plots share: series colours, point markers, axes (ticks, grid, labels) and the
//! legend strip under the panels.
//!
//! Colours: series `i` gets [`series_colour`]`(i)`: the ten Tableau 10 colours (matplotlib's
//! default cycle), then ten of Kelly's colours of maximum contrast, then around again.
//! Markers: a filled dot, a triangle, a square, a cross, a ring, in that order.
//!
//! Axes: a log axis is labelled at 1, 2 and 5 times the powers of ten in its range (only the
//! powers of ten when that would be more than 12 labels) with light grid lines at the other
//! multiples; a linear axis at multiples of 1, 2 or 5 times a power of ten, about 6 of them.
//! Numbers are written by [`format_number`](super::text::format_number).
//!
//! ```
//! use patchgraph::viz::series_colour;
//! assert_eq!(series_colour(0), [31, 119, 180]); // Tableau blue
//! assert_eq!(series_colour(20), series_colour(0));
//! ```

use std::ops::Range;

use plotters::chart::ChartContext;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::{
    BLACK, Cartesian2d, ChartBuilder, Circle, Color, Cross, DrawingArea, DrawingBackend, LogCoord, PathElement,
    RGBColor, Ranged, Rectangle, TriangleMarker,
};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::{Canvas, Direction};
use super::output::draw_error;
use crate::error::Result;

/// Tableau 10, then ten of Kelly's contrast colours.
const PALETTE: [[u8; 3]; 20] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [34, 34, 34],
    [243, 195, 0],
    [135, 86, 146],
    [161, 202, 241],
    [190, 0, 50],
    [194, 178, 128],
    [0, 136, 86],
    [230, 143, 172],
    [0, 103, 165],
    [101, 69, 34],
];

/// The colour of series `i` (see the module docs).
pub fn series_colour(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

pub(crate) fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// A point marker shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    Dot,
    Triangle,
    Square,
    Cross,
    Ring,
}

impl Marker {
    /// Marker `i` of the cycle dot, triangle, square, cross, ring.
    pub(crate) fn nth(i: usize) -> Marker {
        [Marker::Dot, Marker::Triangle, Marker::Square, Marker::Cross, Marker::Ring][i % 5]
    }

    /// Draws the marker centred at the canvas pixel `at`.
    pub(crate) fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        at: (i32, i32),
        colour: RGBColor,
    ) -> Result<()> {
        let (x, y) = at;
        let filled = colour.filled();
        let line = colour.stroke_width(2);
        match self {
            Marker::Dot => root.draw(&Circle::new(at, 4, filled)),
            Marker::Triangle => root.draw(&TriangleMarker::new(at, 6, filled)),
            Marker::Square => root.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], filled)),
            Marker::Cross => root.draw(&Cross::new(at, 5, line)),
            Marker::Ring => root.draw(&Circle::new(at, 5, line)),
        }
        .map_err(draw_error)
    }
}

/// `(min, max)` of the values, `None` when empty.
pub(crate) fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A log axis range around `[lo, hi]` (both > 0): widened by `factor` each way.
pub(crate) fn log_range(lo: f64, hi: f64, factor: f64) -> Range<f64> {
    if lo < hi { lo / factor..hi * factor } else { lo / (factor * 2.0)..hi * factor * 2.0 }
}

/// Labelled and light ticks of a log axis over `range` (see the module docs).
pub(crate) fn log_ticks(range: &Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let (lo, hi) = (range.start.min(range.end), range.start.max(range.end));
    if !(lo > 0.0 && hi.is_finite()) {
        return (Vec::new(), Vec::new());
    }
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let multiples = |ms: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| ms.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let mut major = multiples(&[1.0, 2.0, 5.0]);
    if major.len() > 12 {
        major = multiples(&[1.0]);
    }
    let minor =
        multiples(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).into_iter().filter(|v| !major.contains(v)).collect();
    (major, minor)
}

/// About `target` ticks of a linear axis over `range`, at multiples of a 1-2-5 step of at
/// least `min_step`.
pub(crate) fn linear_ticks(range: &Range<f64>, target: usize, min_step: f64) -> Vec<f64> {
    let (lo, hi) = (range.start.min(range.end), range.start.max(range.end));
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = (span / target.max(1) as f64).max(min_step);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|&s| s >= raw).unwrap_or(10.0 * power);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A panel's chart area: `ChartBuilder` margins that leave room for [`draw_axes`]' caption,
/// tick labels and axis descriptions.
pub(crate) fn panel_builder<'a, 'b, DB: DrawingBackend>(panel: &'a DrawingArea<DB, Shift>) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(panel);
    builder.margin(14).margin_top(44).x_label_area_size(52).y_label_area_size(76);
    builder
}

/// A log-log chart on `panel` over `x` and `y`.
pub(crate) type LogLog<'a, DB> = ChartContext<'a, DB, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;
/// A linear chart.
pub(crate) type Linear<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One axis of a panel: its labelled ticks, light grid ticks, description, and how a tick's
/// value is written (usually [`format_number`](super::text::format_number)).
pub(crate) struct Axis {
    pub ticks: Vec<f64>,
    pub minor: Vec<f64>,
    pub desc: String,
    pub label: fn(f64) -> String,
}

/// Draws a panel's caption, grid, frame, ticks, tick labels and axis descriptions, given how
/// the chart maps values to canvas pixels. Call it before drawing the series (the grid goes
/// under them).
pub(crate) fn draw_axes<DB: DrawingBackend, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    canvas: &Canvas<'_, DB>,
    panel: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'_, DB, Cartesian2d<X, Y>>,
    caption: &str,
    x: &Axis,
    y: &Axis,
) -> Result<()> {
    let root = canvas.root;
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (left, right, top, bottom) = (xs.start, xs.end - 1, ys.start, ys.end - 1);
    let px = |v: f64| chart.backend_coord(&(v, chart.y_range().start)).0;
    let py = |v: f64| chart.backend_coord(&(chart.x_range().start, v)).1;
    let line = |a: (i32, i32), b: (i32, i32), c: RGBColor| root.draw(&PathElement::new(vec![a, b], c.stroke_width(1)));
    let (light, bold) = (RGBColor(238, 238, 238), RGBColor(212, 212, 212));
    for (values, colour) in [(&x.minor, light), (&x.ticks, bold)] {
        for &v in values.iter() {
            let p = px(v);
            if (left..=right).contains(&p) {
                line((p, top), (p, bottom), colour).map_err(draw_error)?;
            }
        }
    }
    for (values, colour) in [(&y.minor, light), (&y.ticks, bold)] {
        for &v in values.iter() {
            let p = py(v);
            if (top..=bottom).contains(&p) {
                line((left, p), (right, p), colour).map_err(draw_error)?;
            }
        }
    }
    root.draw(&Rectangle::new([(left, top), (right, bottom)], BLACK.stroke_width(1))).map_err(draw_error)?;
    for &v in &x.ticks {
        let p = px(v);
        if (left..=right).contains(&p) {
            line((p, bottom), (p, bottom + 5), BLACK).map_err(draw_error)?;
            canvas.text(&(x.label)(v), (p, bottom + 8), 12, HPos::Center, VPos::Top)?;
        }
    }
    for &v in &y.ticks {
        let p = py(v);
        if (top..=bottom).contains(&p) {
            line((left - 5, p), (left, p), BLACK).map_err(draw_error)?;
            canvas.text(&(y.label)(v), (left - 8, p), 12, HPos::Right, VPos::Center)?;
        }
    }
    let (panel_x, panel_y) = panel.get_pixel_range();
    canvas.text(&x.desc, ((left + right) / 2, bottom + 28), 14, HPos::Center, VPos::Top)?;
    canvas.text_directed(
        &y.desc,
        (panel_x.start + 10, (top + bottom) / 2),
        14,
        (HPos::Center, VPos::Top),
        Direction::Up,
    )?;
    canvas.text(caption, ((panel_x.start + panel_x.end) / 2, panel_y.start + 22), 18, HPos::Center, VPos::Center)
}

/// How a legend entry's swatch looks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Swatch {
    /// A short solid line with a dot on it.
    Line(RGBColor),
    /// A short dashed line.
    Dashed(RGBColor),
    /// A marker alone.
    Marker(Marker, RGBColor),
}

/// A legend drawn in a rectangle of the canvas: entries in columns of `column_width` px, rows
/// of 20 px, filled column by column; entries that do not fit are counted in a last
/// "+ n more" entry.
pub(crate) fn draw_legend<DB: DrawingBackend>(
    canvas: &Canvas<'_, DB>,
    area: ((i32, i32), (i32, i32)),
    column_width: i32,
    entries: &[(Swatch, String)],
) -> Result<()> {
    const ROW: i32 = 20;
    let root = canvas.root;
    let ((x0, y0), (x1, y1)) = area;
    let rows = ((y1 - y0) / ROW).max(1) as usize;
    let columns = ((x1 - x0) / column_width).max(1) as usize;
    let capacity = rows * columns;
    let shown = if entries.len() > capacity { capacity - 1 } else { entries.len() };
    let position = |i: usize| (x0 + (i / rows) as i32 * column_width, y0 + (i % rows) as i32 * ROW + ROW / 2);
    for (i, (swatch, text)) in entries.iter().take(shown).enumerate() {
        let (x, y) = position(i);
        match *swatch {
            Swatch::Line(c) => {
                root.draw(&PathElement::new(vec![(x, y), (x + 28, y)], c.stroke_width(2))).map_err(draw_error)?;
                Marker::Dot.draw(root, (x + 14, y), c)?;
            }
            Swatch::Dashed(c) => {
                for k in 0..3 {
                    let seg = vec![(x + k * 11, y), (x + k * 11 + 6, y)];
                    root.draw(&PathElement::new(seg, c.stroke_width(2))).map_err(draw_error)?;
                }
            }
            Swatch::Marker(m, c) => m.draw(root, (x + 14, y), c)?,
        }
        canvas.text(text, (x + 36, y), 13, HPos::Left, VPos::Center)?;
    }
    if shown < entries.len() {
        let (x, y) = position(shown);
        canvas.text(&format!("+ {} more", entries.len() - shown), (x + 36, y), 13, HPos::Left, VPos::Center)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_one_two_five_with_light_multiples() {
        let (major, minor) = log_ticks(&(40.0..4000.0));
        assert_eq!(major, vec![50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]);
        assert!(minor.contains(&40.0) && minor.contains(&300.0) && minor.contains(&3000.0));
        assert!(!minor.contains(&100.0));
        let (major, _) = log_ticks(&(1e-3..1e6));
        assert_eq!(major.len(), 10); // only the powers of ten
        assert!(log_ticks(&(0.0..1.0)).0.is_empty());
    }

    #[test]
    fn linear_ticks_step_by_one_two_five() {
        assert_eq!(linear_ticks(&(0.0..1.0), 5, 0.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(linear_ticks(&(1.0..10.0), 6, 1.0), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(linear_ticks(&(1.0..3.0), 6, 1.0), vec![1.0, 2.0, 3.0]);
        assert_eq!(linear_ticks(&(5.0..5.0), 6, 1.0), vec![5.0]);
    }
}
