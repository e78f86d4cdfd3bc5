//! [`Canvas`]: the surface a picture is drawn on, a plotters drawing area plus how its text is
//! made.
//!
//! Shapes go straight to plotters (`canvas.root.draw(...)`). Text goes through
//! [`Canvas::text`], which depends on the output:
//!
//! - PNG: the text is laid out here with `ab_glyph` on the bundled font (advances, kerning and
//!   each glyph's side bearing, at sub-pixel positions) and its coverage blended in black, pixel
//!   by pixel. plotters 0.3.7's own rasteriser drops side bearings, which gives visibly uneven
//!   letter spacing at 12-14 px.
//! - SVG: a plotters `Text`, i.e. an SVG `<text>` element that the viewer renders.
//!
//! A text `size` is plotters' font size: the font's height (ascent minus descent) in pixels,
//! about 1.16 em for DejaVu Sans. The anchor says which point of the text's box is `at`:
//! left/centre/right of the advance width, top (ascent), centre, or bottom (descent).
//!
//! ```
//! use patchgraph::viz::{TRAINING_PLOT_SIZE, TrainingPoint, render_training_plot};
//! let p = TrainingPoint { epoch: 1, train_loss: 1.0, test_loss: 1.0, train_accuracy: 0.5, test_accuracy: 0.5 };
//! let pixels = render_training_plot(&[("run".into(), vec![p])], "Title").unwrap();
//! // The title strip (40 px) holds the title in black, anti-aliased: grey levels at its edges.
//! let strip: Vec<[u8; 3]> = (0..40).flat_map(|y| (0..TRAINING_PLOT_SIZE.0).map(move |x| (x, y)))
//!     .map(|(x, y)| pixels.get_pixel(x, y).0).collect();
//! assert!(strip.contains(&[0, 0, 0]));
//! assert!(strip.iter().any(|&[r, g, b]| r == g && g == b && (30..220).contains(&r)));
//! ```

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::coord::Shift;
use plotters::prelude::{BLACK, Color, DrawingArea, DrawingBackend, Text};
use plotters::style::FontTransform;
use plotters::style::text_anchor::{HPos, VPos};

use super::font::DEJAVU_SANS;
use super::output::draw_error;
use super::text::label_style;
use crate::error::{Error, Result};

/// How text is put on a canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Glyphs {
    /// Rasterised here, on the bundled font (PNG).
    Raster,
    /// Left to the output format (SVG `<text>`).
    Native,
}

/// A drawing area and its text mode.
pub(crate) struct Canvas<'a, DB: DrawingBackend> {
    /// The whole picture; coordinates are canvas pixels from the top-left corner.
    pub root: &'a DrawingArea<DB, Shift>,
    pub glyphs: Glyphs,
}

/// Which way text runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Left to right.
    Right,
    /// Bottom to top (a y-axis label).
    Up,
}

fn bundled_font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(DEJAVU_SANS).ok()).as_ref().ok_or_else(|| Error::Draw {
        what: "the bundled font assets/DejaVuSans.ttf".into(),
        reason: "ab_glyph could not parse it".into(),
    })
}

impl<DB: DrawingBackend> Canvas<'_, DB> {
    /// Black text of `size` px with its `(h, v)` anchor at `at`.
    pub(crate) fn text(&self, text: &str, at: (i32, i32), size: u32, h: HPos, v: VPos) -> Result<()> {
        self.text_directed(text, at, size, (h, v), Direction::Right)
    }

    /// [`Canvas::text`] running `direction`; the anchor is taken along and across the text.
    pub(crate) fn text_directed(
        &self,
        text: &str,
        at: (i32, i32),
        size: u32,
        (h, v): (HPos, VPos),
        direction: Direction,
    ) -> Result<()> {
        match self.glyphs {
            Glyphs::Native => {
                let mut style = label_style(size, h, v);
                if direction == Direction::Up {
                    style = style.transform(FontTransform::Rotate270);
                }
                self.root.draw(&Text::new(text, at, style)).map_err(draw_error)
            }
            Glyphs::Raster => {
                for ((x, y), coverage) in rasterise(text, size, (h, v))? {
                    let p = match direction {
                        Direction::Right => (at.0 + x, at.1 + y),
                        Direction::Up => (at.0 + y, at.1 - x),
                    };
                    self.root.draw_pixel(p, &BLACK.mix(f64::from(coverage))).map_err(draw_error)?;
                }
                Ok(())
            }
        }
    }
}

/// The coverage of `text` set at `size` px, as `((x, y), coverage in (0, 1])` relative to the
/// anchor point.
fn rasterise(text: &str, size: u32, (h, v): (HPos, VPos)) -> Result<Vec<((i32, i32), f32)>> {
    let font = bundled_font()?;
    let scale = PxScale::from(size as f32);
    let scaled = font.as_scaled(scale);
    let mut pen = 0.0f32;
    let mut prev = None;
    let mut placed = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            pen += scaled.kern(p, id);
        }
        placed.push((id, pen));
        pen += scaled.h_advance(id);
        prev = Some(id);
    }
    let x0 = match h {
        HPos::Left => 0.0,
        HPos::Center => -pen / 2.0,
        HPos::Right => -pen,
    };
    let (ascent, descent) = (scaled.ascent(), scaled.descent());
    let baseline = match v {
        VPos::Top => ascent,
        VPos::Center => (ascent + descent) / 2.0,
        VPos::Bottom => descent,
    };
    let mut pixels = Vec::new();
    for (id, x) in placed {
        let glyph = id.with_scale_and_position(scale, point(x0 + x, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            let (bx, by) = (bounds.min.x as i32, bounds.min.y as i32);
            outline.draw(|x, y, c| {
                if c > 0.0 {
                    pixels.push(((bx + x as i32, by + y as i32), c.min(1.0)));
                }
            });
        }
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_place_the_text_box() {
        let span = |h, v| {
            let px = rasterise("Hello", 20, (h, v)).unwrap();
            let xs = px.iter().map(|p| p.0.0);
            let ys = px.iter().map(|p| p.0.1);
            (xs.clone().min().unwrap(), xs.max().unwrap(), ys.clone().min().unwrap(), ys.max().unwrap())
        };
        let (l0, l1, t0, _) = span(HPos::Left, VPos::Top);
        assert!((0..=3).contains(&l0) && l1 > 30, "left-anchored text starts at the anchor: {l0}..{l1}");
        assert!((0..=6).contains(&t0), "top-anchored text starts just below the anchor: {t0}");
        let (r0, r1, _, b1) = span(HPos::Right, VPos::Bottom);
        assert!(r1 <= 0 && r0 < -30, "right-anchored text ends at the anchor: {r0}..{r1}");
        assert!(b1 <= 0, "bottom-anchored text ends above the anchor: {b1}");
        let (c0, c1, _, _) = span(HPos::Center, VPos::Center);
        assert!((c0 + c1).abs() <= 3, "centred: {c0}..{c1}");
    }

    #[test]
    fn letters_keep_their_side_bearings() {
        // "ll": two identical glyphs one advance apart, so their ink is one advance apart.
        let px = rasterise("ll", 30, (HPos::Left, VPos::Top)).unwrap();
        let mut columns: Vec<i32> = px.iter().filter(|p| p.1 > 0.5).map(|p| p.0.0).collect();
        columns.sort_unstable();
        columns.dedup();
        let gap = columns.windows(2).find(|w| w[1] > w[0] + 1).map(|w| w[0]);
        let advance =
            bundled_font().unwrap().as_scaled(PxScale::from(30.0)).h_advance(bundled_font().unwrap().glyph_id('l'));
        let first = columns[0];
        let second = columns.iter().copied().find(|&c| c > gap.unwrap()).unwrap();
        assert!(((second - first) as f32 - advance).abs() <= 1.0, "{first} {second} {advance}");
    }
}
