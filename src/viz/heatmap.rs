//! An attention map: one value per patch, shown as a colour-mapped overlay on the photo.
//!
//! [`draw_attention_map`] writes the picture (PNG or SVG by the extension),
//! [`render_attention_map`] returns its pixels, [`heatmap_layout`] says where the patches land.
//!
//! The values (e.g. one row of attention weights: how much the query patch attends to each
//! patch) are normalised by their maximum, `t = max(v, 0) / max_k v_k`, so the largest is 1;
//! negative values count as 0, and if no value is positive nothing is overlaid. Every pixel of
//! patch `k` is then blended with the colour map at `t_k`, with an opacity growing with the
//! value:
//!
//! ```text
//! a   = opacity * t_k                                   (opacity: 0.7 by default)
//! out = round((1 - a) * photo + a * colormap(t_k))      per channel, 8-bit
//! ```
//!
//! so patches with no attention show the photo unchanged and the most attended patch is the
//! most covered, in the map's brightest colour ([`Colormap::Inferno`] by default: black,
//! purple, red, orange, pale yellow). The photo is scaled up as in [`PatchLayout`] (longer side
//! at least 448 px by default). Optionally the query patch is outlined
//! ([`HeatmapOptions::highlight_colour`], cyan by default) and a colour bar is drawn on the
//! right, labelled `0` and the maximum value.
//!
//! ```
//! use patchgraph::image::ChwImage;
//! use patchgraph::viz::{HeatmapOptions, draw_attention_map, render_attention_map};
//! let photo = ChwImage::filled(3, 32, 32, 0.5).unwrap();
//! // A 2 x 2 grid of 16 x 16 patches; patch 3 (bottom right) gets the most attention.
//! let attention = [0.1, 0.2, 0.0, 0.7];
//! let pixels = render_attention_map(&photo, (2, 2), &attention, Some(0), &HeatmapOptions::default()).unwrap();
//! // 32 px scaled by 14 = 448, 8 px padding, a 112 px colour bar on the right.
//! assert_eq!(pixels.dimensions(), (448 + 16 + 112, 448 + 16));
//! let path = std::env::temp_dir().join("patchgraph-doc-heatmap.svg");
//! draw_attention_map(&photo, (2, 2), &attention, Some(0), &path).unwrap();
//! // One value per patch, all finite.
//! assert!(render_attention_map(&photo, (2, 2), &[0.1, f32::NAN, 0.0, 0.7], None, &HeatmapOptions::default()).is_err());
//! assert!(render_attention_map(&photo, (2, 2), &[1.0; 3], None, &HeatmapOptions::default()).is_err());
//! ```

use std::path::Path;

use ::image::{Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::{BLACK, Color, DrawingArea, DrawingBackend, RGBColor, Rectangle};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::Canvas;
use super::colormap::Colormap;
use super::layout::{PatchLayout, canvas_side, choose_scale, photo_rgb};
use super::output::{OutputFormat, Picture, Raster, draw_error, render_rgb, save};
use super::text::format_number;
use crate::error::{Error, Result, ensure_finite};
use crate::image::ChwImage;

/// Width of the colour bar area on the right of the photo, in px: a 16 px gap, the 20 px bar,
/// and room for its labels.
pub const COLOUR_BAR_WIDTH: u32 = 112;

/// How an attention map is drawn. `HeatmapOptions::default()` gives the documented defaults;
/// override fields with `HeatmapOptions { colour_bar: false, ..Default::default() }`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatmapOptions {
    /// Canvas pixels per photo pixel; `None` (default): the smallest integer that makes the
    /// photo's longer side at least [`min_side`](Self::min_side) px.
    pub scale: Option<u32>,
    /// The longer side the automatic scale reaches, in px (default 448).
    pub min_side: u32,
    /// Blank margin around the picture, in px (default 8).
    pub padding: u32,
    /// The colour map (default [`Colormap::Inferno`]).
    pub colormap: Colormap,
    /// Opacity of the overlay on the patch with the largest value, in `[0, 1]` (default 0.7);
    /// a patch with normalised value `t` gets `opacity * t`.
    pub opacity: f64,
    /// Draw a colour bar on the right (default `true`; adds [`COLOUR_BAR_WIDTH`] px).
    pub colour_bar: bool,
    /// Outline colour of the highlighted (query) patch (default `[0, 255, 255]`, cyan).
    pub highlight_colour: [u8; 3],
    /// Outline width in px, at least 1 (default 3).
    pub highlight_width: u32,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        HeatmapOptions {
            scale: None,
            min_side: 448,
            padding: 8,
            colormap: Colormap::Inferno,
            opacity: 0.7,
            colour_bar: true,
            highlight_colour: [0, 255, 255],
            highlight_width: 3,
        }
    }
}

/// Where the photo and its `rows x cols` patches land (see [`PatchLayout`]).
///
/// Canvas size: `(W s + 2 padding + bar, H s + 2 padding)` with `bar` =
/// [`COLOUR_BAR_WIDTH`] when [`HeatmapOptions::colour_bar`], else 0. Patches are
/// `(H / rows) x (W / cols)` pixels (not necessarily square).
///
/// Errors: `rows` or `cols` zero, or not dividing `H` and `W` ([`Error::Image`]); a zero scale
/// or a canvas side over [`MAX_SIDE`](super::MAX_SIDE) ([`Error::Invalid`]).
pub fn heatmap_layout(image: &ChwImage, grid: (usize, usize), options: &HeatmapOptions) -> Result<PatchLayout> {
    let (_, h, w) = image.shape();
    let (rows, cols) = grid;
    if rows == 0 || cols == 0 || h % rows != 0 || w % cols != 0 {
        return Err(Error::Image {
            what: "attention map".into(),
            reason: format!("a {h} x {w} image does not split into a {rows} x {cols} patch grid"),
        });
    }
    let scale = choose_scale(h, w, options.scale, options.min_side)?;
    let pad = options.padding;
    let bar = if options.colour_bar { COLOUR_BAR_WIDTH } else { 0 };
    let too_big = || Error::invalid("HeatmapOptions", "padding overflows a canvas side");
    let extra_h = pad.checked_mul(2).ok_or_else(too_big)?;
    let extra_w = extra_h.checked_add(bar).ok_or_else(too_big)?;
    let width = canvas_side("attention map width", w, scale, extra_w)?;
    let height = canvas_side("attention map height", h, scale, extra_h)?;
    Ok(PatchLayout {
        rows,
        cols,
        patch: (h / rows, w / cols),
        scale,
        origin: (pad as i32, pad as i32),
        size: (width, height),
        token: None,
    })
}

/// Draws the attention map into `path` (`.png` or `.svg`) with the default
/// [`HeatmapOptions`]. See [`render_attention_map`] for the inputs and errors.
pub fn draw_attention_map(
    image: &ChwImage,
    grid: (usize, usize),
    values: &[f32],
    highlight: Option<usize>,
    path: &Path,
) -> Result<()> {
    draw_attention_map_with(image, grid, values, highlight, &HeatmapOptions::default(), path)
}

/// [`draw_attention_map`] with explicit options.
pub fn draw_attention_map_with(
    image: &ChwImage,
    grid: (usize, usize),
    values: &[f32],
    highlight: Option<usize>,
    options: &HeatmapOptions,
    path: &Path,
) -> Result<()> {
    OutputFormat::from_path(path)?;
    save(&HeatmapPicture::new(image, grid, values, highlight, options)?, path)
}

/// The pixels of the picture [`draw_attention_map_with`] writes to a `.png` (size:
/// [`heatmap_layout`]).
///
/// `image`: the photo, 1 or 3 channels with values in `[0, 1]` (clamped; pass it before
/// normalisation). `grid`: `(rows, cols)` of the patch grid. `values`: one per patch,
/// row-major (patch `(r, c)` at `r * cols + c`; no class token). `highlight`: a patch to
/// outline, e.g. the query.
///
/// Errors: those of [`heatmap_layout`]; `values.len() != rows * cols` ([`Error::Shape`]); a
/// NaN or infinite value ([`Error::NonFinite`]); `highlight` out of range
/// ([`Error::NodeOutOfRange`]); an image with other than 1 or 3 channels ([`Error::Image`]);
/// an opacity outside `[0, 1]` or a zero highlight width ([`Error::Invalid`]).
pub fn render_attention_map(
    image: &ChwImage,
    grid: (usize, usize),
    values: &[f32],
    highlight: Option<usize>,
    options: &HeatmapOptions,
) -> Result<RgbImage> {
    render_rgb(&HeatmapPicture::new(image, grid, values, highlight, options)?)
}

/// A validated attention map, ready to draw.
struct HeatmapPicture<'a> {
    layout: PatchLayout,
    raster: Raster,
    max: f32,
    highlight: Option<usize>,
    options: &'a HeatmapOptions,
}

impl<'a> HeatmapPicture<'a> {
    fn new(
        image: &ChwImage,
        grid: (usize, usize),
        values: &[f32],
        highlight: Option<usize>,
        options: &'a HeatmapOptions,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&options.opacity) {
            return Err(Error::invalid("HeatmapOptions::opacity", format!("{} is not in [0, 1]", options.opacity)));
        }
        if options.highlight_width == 0 {
            return Err(Error::invalid("HeatmapOptions::highlight_width", "must be at least 1 px"));
        }
        let layout = heatmap_layout(image, grid, options)?;
        let n = layout.rows * layout.cols;
        if values.len() != n {
            return Err(Error::shape(
                "attention values",
                format!("{n} (one per patch of the {} x {} grid)", layout.rows, layout.cols),
                values.len().to_string(),
            ));
        }
        ensure_finite("attention values", values)?;
        if let Some(k) = highlight {
            if k >= n {
                return Err(Error::NodeOutOfRange { what: "highlighted patch".into(), index: k, num_nodes: n });
            }
        }
        let max = values.iter().fold(0.0f32, |m, &v| m.max(v));
        let mut pixels = photo_rgb(image)?;
        if max > 0.0 {
            let (ph, pw) = layout.patch;
            for (x, y, p) in pixels.enumerate_pixels_mut() {
                let k = (y as usize / ph) * layout.cols + x as usize / pw;
                let t = values[k].max(0.0) / max;
                *p = blend(*p, options.colormap.rgb(t), options.opacity as f32 * t);
            }
        }
        let raster = Raster { origin: layout.origin, scale: layout.scale, pixels };
        Ok(HeatmapPicture { layout, raster, max, highlight, options })
    }

    fn draw_highlight<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let Some(k) = self.highlight else { return Ok(()) };
        let [r, g, b] = self.options.highlight_colour;
        let ((x0, y0), (x1, y1)) = self.layout.patch_rect(k / self.layout.cols, k % self.layout.cols);
        for i in 0..self.options.highlight_width as i32 {
            let rect = Rectangle::new([(x0 + i, y0 + i), (x1 - 1 - i, y1 - 1 - i)], RGBColor(r, g, b).stroke_width(1));
            root.draw(&rect).map_err(draw_error)?;
        }
        Ok(())
    }

    /// The colour bar: the map from 1 (top) to 0 (bottom), one 1 px band per row, framed,
    /// labelled with the maximum value and 0.
    fn draw_colour_bar<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        let root = canvas.root;
        if !self.options.colour_bar {
            return Ok(());
        }
        let ((_, top), (right, bottom)) = self.layout.photo_rect();
        let (x0, x1) = (right + 16, right + 36);
        let span = (bottom - 1 - top).max(1) as f32;
        for y in top..bottom {
            let [r, g, b] = self.options.colormap.rgb((bottom - 1 - y) as f32 / span);
            root.draw(&Rectangle::new([(x0, y), (x1, y + 1)], RGBColor(r, g, b).filled())).map_err(draw_error)?;
        }
        root.draw(&Rectangle::new([(x0 - 1, top - 1), (x1 + 1, bottom + 1)], BLACK.stroke_width(1)))
            .map_err(draw_error)?;
        canvas.text(&format_number(f64::from(self.max)), (x1 + 6, top + 6), 14, HPos::Left, VPos::Center)?;
        canvas.text("0", (x1 + 6, bottom - 7), 14, HPos::Left, VPos::Center)
    }
}

/// `round((1 - a) * under + a * over)` per channel.
fn blend(under: Rgb<u8>, over: [u8; 3], a: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|c| {
        ((1.0 - a) * f32::from(under.0[c]) + a * f32::from(over[c])).round().clamp(0.0, 255.0) as u8
    }))
}

impl Picture for HeatmapPicture<'_> {
    fn size(&self) -> (u32, u32) {
        self.layout.size
    }

    fn raster(&self) -> Option<&Raster> {
        Some(&self.raster)
    }

    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()> {
        self.draw_highlight(canvas.root)?;
        self.draw_colour_bar(canvas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_mixes_linearly_and_rounds() {
        assert_eq!(blend(Rgb([100, 100, 100]), [200, 0, 50], 0.0), Rgb([100, 100, 100]));
        assert_eq!(blend(Rgb([100, 100, 100]), [200, 0, 50], 1.0), Rgb([200, 0, 50]));
        assert_eq!(blend(Rgb([100, 100, 100]), [200, 0, 51], 0.5), Rgb([150, 50, 76])); // 75.5 rounds up
    }

    #[test]
    fn zero_values_leave_the_photo_unchanged() {
        let photo = ChwImage::filled(1, 8, 8, 0.5).unwrap();
        let options = HeatmapOptions { colour_bar: false, scale: Some(1), ..Default::default() };
        let picture = HeatmapPicture::new(&photo, (2, 2), &[0.0, -1.0, 0.0, 0.0], None, &options).unwrap();
        assert!(picture.raster.pixels.pixels().all(|p| p.0 == [128, 128, 128]));
    }
}
