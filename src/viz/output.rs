//! Output files: PNG or SVG, chosen by the file's extension, from one drawing routine.
//!
//! Every picture of [`crate::viz`] is drawn once, generically, on a plotters `DrawingArea`, and
//! this module runs that routine on the right backend:
//!
//! - `.png`: plotters' bitmap backend on an in-memory RGB buffer, encoded with the `image`
//!   crate's PNG encoder (the crate's own `image` 0.25; plotters' `bitmap_encoder` would pull in
//!   `image` 0.24). The same pixels are what the `render_*` functions return.
//! - `.svg`: plotters' SVG backend. A photo layer is embedded once, at its own resolution, as a
//!   PNG `data:` URI in an `<image>` element (SVG 2 `href`) with `image-rendering: pixelated`,
//!   rather than as one rectangle per pixel.
//!
//! The extension is matched case-insensitively; anything else is an [`Error::Invalid`]. Both
//! outputs are deterministic: the same inputs give byte-identical files. The background is
//! white.
//!
//! ```
//! use patchgraph::viz::OutputFormat;
//! assert_eq!(OutputFormat::from_path("attn.PNG".as_ref()).unwrap(), OutputFormat::Png);
//! assert_eq!(OutputFormat::from_path("out/graph.svg".as_ref()).unwrap(), OutputFormat::Svg);
//! assert!(OutputFormat::from_path("plot.pdf".as_ref()).is_err());
//! assert!(OutputFormat::from_path("no_extension".as_ref()).is_err());
//! ```

use std::path::Path;

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder, RgbImage};
use plotters::backend::RGBPixel;
use plotters::prelude::{BitMapBackend, DrawingAreaErrorKind, DrawingBackend, IntoDrawingArea, SVGBackend};

use super::canvas::{Canvas, Glyphs};
use super::font::register_bundled_font;
use crate::error::{Error, Result};

/// The largest side of a picture, in pixels: larger requests are an [`Error::Invalid`] (a
/// 16384 x 16384 RGB canvas is already 768 MiB).
pub const MAX_SIDE: u32 = 16384;

/// A picture file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// PNG, 8-bit RGB.
    Png,
    /// SVG 1.1 (with an SVG 2 `href` for an embedded photo).
    Svg,
}

impl OutputFormat {
    /// The format of `path` by its extension, `.png` or `.svg` (any case).
    ///
    /// Errors ([`Error::Invalid`]) for any other extension or none.
    pub fn from_path(path: &Path) -> Result<OutputFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(OutputFormat::Png),
            Some("svg") => Ok(OutputFormat::Svg),
            _ => Err(Error::invalid(
                format!("output file {}", path.display()),
                "the extension must be .png or .svg (the format is chosen by it)",
            )),
        }
    }
}

/// A photo layer under the vector drawing: `pixels` shown with its top-left corner at `origin`,
/// each pixel a `scale x scale` square (nearest neighbour).
pub(crate) struct Raster {
    pub origin: (i32, i32),
    pub scale: u32,
    pub pixels: RgbImage,
}

/// A picture: its size, an optional photo layer, and a vector layer drawn over it with plotters.
pub(crate) trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// The photo layer, if any (drawn first, over the white background).
    fn raster(&self) -> Option<&Raster>;
    /// Draws the vector layer (lines, markers, text) on the canvas, which must not be cleared.
    fn draw<DB: DrawingBackend>(&self, canvas: &Canvas<'_, DB>) -> Result<()>;
}

/// Maps a plotters drawing error into [`Error::Draw`].
pub(crate) fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Draw { what: "picture".into(), reason: e.to_string() }
}

fn check_size((w, h): (u32, u32)) -> Result<()> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::invalid(
            "picture size",
            format!("{w} x {h} pixels: each side must be between 1 and {MAX_SIDE}"),
        ));
    }
    Ok(())
}

/// Draws `picture` into an RGB image (what a `.png` holds).
pub(crate) fn render_rgb(picture: &impl Picture) -> Result<RgbImage> {
    let (w, h) = picture.size();
    check_size((w, h))?;
    register_bundled_font()?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    if let Some(r) = picture.raster() {
        blit_scaled(&mut buf, (w, h), r);
    }
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))
            .map_err(|e| Error::Draw { what: "picture".into(), reason: e.to_string() })?;
        let root = backend.into_drawing_area();
        picture.draw(&Canvas { root: &root, glyphs: Glyphs::Raster })?;
        root.present().map_err(draw_error)?;
    }
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::Draw { what: "picture".into(), reason: "RGB buffer of the wrong length".into() })
}

/// Draws `picture` as an SVG document.
pub(crate) fn render_svg(picture: &impl Picture) -> Result<String> {
    let (w, h) = picture.size();
    check_size((w, h))?;
    register_bundled_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        picture.draw(&Canvas { root: &root, glyphs: Glyphs::Native })?;
        root.present().map_err(draw_error)?;
    }
    // The backend's first line is the `<svg ...>` tag: the background and the photo go right
    // after it, under everything plotters drew.
    let mut under = format!("<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#FFFFFF\" stroke=\"none\"/>\n");
    if let Some(r) = picture.raster() {
        let png = encode_png(&r.pixels, "SVG photo layer")?;
        under.push_str(&format!(
            "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" preserveAspectRatio=\"none\" \
             style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n",
            r.origin.0,
            r.origin.1,
            r.pixels.width() * r.scale,
            r.pixels.height() * r.scale,
            base64(&png)
        ));
    }
    let at = svg
        .find('\n')
        .map(|i| i + 1)
        .ok_or_else(|| Error::Draw { what: "SVG".into(), reason: "the backend wrote no <svg> tag".into() })?;
    svg.insert_str(at, &under);
    Ok(svg)
}

/// Draws `picture` into `path` in the format its extension names.
pub(crate) fn save(picture: &impl Picture, path: &Path) -> Result<()> {
    let bytes = match OutputFormat::from_path(path)? {
        OutputFormat::Png => encode_png(&render_rgb(picture)?, &path.display().to_string())?,
        OutputFormat::Svg => render_svg(picture)?.into_bytes(),
    };
    crate::atomic_file::write_atomically(path, &bytes)
}

/// PNG bytes of an RGB image (the `image` crate's encoder, default settings: deterministic).
pub(crate) fn encode_png(image: &RgbImage, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(image.as_raw(), image.width(), image.height(), ExtendedColorType::Rgb8)
        .map_err(|source| Error::Codec { path: what.to_string(), source })?;
    Ok(out)
}

/// Copies `raster` into the RGB buffer of a `w x h` canvas, each pixel a `scale x scale`
/// square, clipped to the canvas.
fn blit_scaled(buf: &mut [u8], (w, h): (u32, u32), raster: &Raster) {
    let s = i64::from(raster.scale.max(1));
    let (ox, oy) = (i64::from(raster.origin.0), i64::from(raster.origin.1));
    let (rw, rh) = (i64::from(raster.pixels.width()), i64::from(raster.pixels.height()));
    let y_range = oy.max(0)..(oy + rh * s).min(i64::from(h));
    let x_range = ox.max(0)..(ox + rw * s).min(i64::from(w));
    for y in y_range {
        let sy = ((y - oy) / s) as u32;
        for x in x_range.clone() {
            let sx = ((x - ox) / s) as u32;
            let p = raster.pixels.get_pixel(sx, sy).0;
            let at = (y as usize * w as usize + x as usize) * 3;
            buf[at..at + 3].copy_from_slice(&p);
        }
    }
}

/// Standard base64 (RFC 4648, with `=` padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn blit_scales_and_clips() {
        let mut pixels = RgbImage::new(2, 1);
        pixels.put_pixel(1, 0, ::image::Rgb([9, 8, 7]));
        let raster = Raster { origin: (1, 0), scale: 2, pixels };
        let mut buf = vec![255u8; 4 * 2 * 3];
        blit_scaled(&mut buf, (4, 2), &raster);
        // Row 0: x = 0 untouched, x = 1, 2 the black pixel, x = 3 the coloured one (x = 4 clipped).
        assert_eq!(&buf[..12], &[255, 255, 255, 0, 0, 0, 0, 0, 0, 9, 8, 7]);
        assert_eq!(&buf[12..], &buf[..12].to_vec()[..]);
    }
}
