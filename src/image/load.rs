//! Decoding files with the `image` crate into [`ChwImage`]s with values in `[0, 1]`, and back.

use std::path::Path;

use ::image::{DynamicImage, GrayImage, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use super::chw::{ChwImage, checked_len};
use crate::error::{Error, Result};
use crate::limits::{MAX_IMAGE_SIDE, check_image_size};

/// How many channels a decoded image gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    /// One luma plane, `[1 x H x W]`. A colour image is converted as Pillow's `convert("L")`
    /// (ITU-R 601-2 weights): 8-bit colour exactly, `(19595 R + 38470 G + 7471 B + 2^15) >> 16`
    /// rounded to 8 bits; deeper colour `0.299 R + 0.587 G + 0.114 B` in f32. A grayscale file
    /// is read as is.
    Gray,
    /// Three planes R, G, B, `[3 x H x W]` (Pillow's `convert("RGB")`): a grayscale file is
    /// replicated into the three planes, an alpha channel is dropped (not composited).
    #[default]
    Rgb,
}

impl Channels {
    /// The number of planes: 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// Pillow's `convert("L")` weights (ITU-R 601-2 luma), which torchvision's `Grayscale` uses.
const LUMA_601: [f32; 3] = [0.299, 0.587, 0.114];

/// Decodes the image file at `path` as RGB: `[3 x H x W]` with values in `[0, 1]`.
///
/// Shorthand for [`load_image_with`]`(path, Channels::Rgb)`; see there for the errors.
pub fn load_image(path: impl AsRef<Path>) -> Result<ChwImage> {
    load_image_with(path, Channels::Rgb)
}

/// Decodes the image file at `path` into `[C x H x W]` with values in `[0, 1]` (`C` from
/// `channels`).
///
/// Any format the `image` crate 0.25 decodes with its default features (PNG, JPEG, GIF, BMP,
/// TIFF, WebP, ...). The format is guessed from the file's first bytes, falling back to its
/// extension. Integer samples are divided by their maximum (255 for 8-bit, as torchvision's
/// `ToTensor`; 65535 for 16-bit); float samples (OpenEXR, Radiance HDR) are clamped to `[0, 1]`.
///
/// The width and height are read from the file's header and checked against
/// [`check_image_size`] before anything is decoded.
///
/// Errors: [`Error::Io`] if the file cannot be opened or read, [`Error::Codec`] if it is not an
/// image the decoder understands (or exceeds the decoder's default memory limits),
/// [`Error::Image`] naming the file if its header states a size beyond
/// [`crate::limits::MAX_IMAGE_SIDE`] or [`crate::limits::MAX_IMAGE_PIXELS`], or if it decodes to
/// zero pixels, [`Error::NonFinite`] for a NaN float sample.
pub fn load_image_with(path: impl AsRef<Path>, channels: Channels) -> Result<ChwImage> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let codec = |source| Error::Codec { path: shown.clone(), source };
    let open = || -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
        ImageReader::open(path).map_err(io_err)?.with_guessed_format().map_err(io_err)
    };
    // The size from the header alone, checked before the decoder allocates its buffer: a
    // file of a few bytes can announce 4 G x 4 G pixels.
    // No limits on this reader, or the decoder's own would answer first (a codec error that
    // does not say which limit): only the header is read.
    let mut header = open()?;
    header.no_limits();
    let (width, height) = header.into_dimensions().map_err(codec)?;
    check_image_size(&format!("{shown} (decoded)"), height as usize, width as usize)?;
    let mut reader = open()?;
    // The same bound for the decoder itself (a file that changed between the two reads, a
    // format whose decoder sizes frames on its own), on top of the crate's default memory cap.
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    reader.limits(limits);
    let decoded = reader.decode().map_err(codec)?;
    from_dynamic_image_named(&decoded, channels, &shown)
}

/// Converts a decoded image into `[C x H x W]` with values in `[0, 1]` (see [`load_image_with`]
/// for how samples and channels are converted).
///
/// Errors: [`Error::Image`] for a zero-sized image, [`Error::NonFinite`] for a NaN float sample.
///
/// ```
/// use image::{DynamicImage, Rgb, RgbImage};
/// use patchgraph::image::{Channels, from_dynamic_image};
/// let mut rgb = RgbImage::new(2, 1); // width 2, height 1
/// rgb.put_pixel(1, 0, Rgb([255, 0, 51]));
/// let img = from_dynamic_image(&DynamicImage::ImageRgb8(rgb), Channels::Rgb).unwrap();
/// assert_eq!(img.shape(), (3, 1, 2));
/// assert_eq!(img.as_slice(), &[0.0, 1.0, 0.0, 0.0, 0.0, 0.2]);
/// ```
pub fn from_dynamic_image(image: &DynamicImage, channels: Channels) -> Result<ChwImage> {
    from_dynamic_image_named(image, channels, "decoded image")
}

fn from_dynamic_image_named(image: &DynamicImage, channels: Channels, what: &str) -> Result<ChwImage> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let plane = checked_len(what, 1, height, width)?;
    // Samples are converted here rather than with `to_rgb32f`, which is not exact for every
    // layout (gray 102 came out as 0.40000004, not 102 / 255 = 0.4 as torchvision's `ToTensor`).
    let u8s = |v: u8| f32::from(v) / 255.0;
    let u16s = |v: u16| f32::from(v) / 65535.0;
    let f32s = |v: f32| v;
    let data = match image {
        DynamicImage::ImageLuma8(b) => to_planes(b.as_raw(), 1, false, u8s, channels),
        DynamicImage::ImageLumaA8(b) => to_planes(b.as_raw(), 2, false, u8s, channels),
        DynamicImage::ImageRgb8(b) if channels == Channels::Gray => luma8(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) if channels == Channels::Gray => luma8(b.as_raw(), 4),
        DynamicImage::ImageRgb8(b) => to_planes(b.as_raw(), 3, true, u8s, channels),
        DynamicImage::ImageRgba8(b) => to_planes(b.as_raw(), 4, true, u8s, channels),
        DynamicImage::ImageLuma16(b) => to_planes(b.as_raw(), 1, false, u16s, channels),
        DynamicImage::ImageLumaA16(b) => to_planes(b.as_raw(), 2, false, u16s, channels),
        DynamicImage::ImageRgb16(b) => to_planes(b.as_raw(), 3, true, u16s, channels),
        DynamicImage::ImageRgba16(b) => to_planes(b.as_raw(), 4, true, u16s, channels),
        DynamicImage::ImageRgb32F(b) => to_planes(b.as_raw(), 3, true, f32s, channels),
        DynamicImage::ImageRgba32F(b) => to_planes(b.as_raw(), 4, true, f32s, channels),
        // A layout added to the non-exhaustive enum later: through the crate's own conversion.
        other => to_planes(other.to_rgba32f().as_raw(), 4, other.color().has_color(), f32s, channels),
    };
    debug_assert_eq!(data.len(), plane * channels.count());
    crate::error::ensure_finite(what, &data)?;
    ChwImage::new(channels.count(), height, width, data)
}

/// Interleaved pixels of `stride` samples (gray or gray+alpha if `!colour`, RGB or RGBA if
/// `colour`) to `channels` planes, each sample mapped by `to_f32` and clamped to `[0, 1]`.
fn to_planes<T: Copy>(
    raw: &[T],
    stride: usize,
    colour: bool,
    to_f32: impl Fn(T) -> f32,
    channels: Channels,
) -> Vec<f32> {
    let pixels = raw.chunks_exact(stride);
    let mut data = Vec::with_capacity(pixels.len() * channels.count());
    match (channels, colour) {
        (Channels::Gray, false) => data.extend(pixels.map(|p| clamp_unit(to_f32(p[0])))),
        (Channels::Gray, true) => data.extend(pixels.map(|p| {
            let [r, g, b] = [0, 1, 2].map(|c| clamp_unit(to_f32(p[c])));
            clamp_unit(LUMA_601[0] * r + LUMA_601[1] * g + LUMA_601[2] * b)
        })),
        (Channels::Rgb, false) => {
            let gray: Vec<f32> = pixels.map(|p| clamp_unit(to_f32(p[0]))).collect();
            for _ in 0..3 {
                data.extend_from_slice(&gray);
            }
        }
        (Channels::Rgb, true) => {
            for c in 0..3 {
                data.extend(raw.chunks_exact(stride).map(|p| clamp_unit(to_f32(p[c]))));
            }
        }
    }
    data
}

/// 8-bit colour to one plane exactly as Pillow's `convert("L")`, which timm's and
/// torchvision's loaders call: `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`, an 8-bit value
/// (the 601 weights in 16-bit fixed point, rounded), then `/ 255`.
fn luma8(raw: &[u8], stride: usize) -> Vec<f32> {
    raw.chunks_exact(stride)
        .map(|p| {
            let l = (19595 * u32::from(p[0]) + 38470 * u32::from(p[1]) + 7471 * u32::from(p[2]) + (1 << 15)) >> 16;
            l as f32 / 255.0
        })
        .collect()
}

/// Clamps into `[0, 1]`, leaving NaN as NaN (so that it is reported, not hidden).
fn clamp_unit(v: f32) -> f32 {
    v.clamp(0.0, 1.0) // NaN in, NaN out; constant bounds, so it cannot panic
}

/// Converts a 1- or 3-channel image with values in `[0, 1]` back to an 8-bit `image` buffer
/// (`Luma8` or `Rgb8`), for saving or drawing: values are clamped to `[0, 1]`, scaled by 255 and
/// rounded (NaN becomes 0).
///
/// Errors ([`Error::Image`]) for any other channel count or a side beyond `u32`.
pub fn to_dynamic_image(image: &ChwImage) -> Result<DynamicImage> {
    let (c, h, w) = image.shape();
    let too_big = || Error::Image {
        what: "to_dynamic_image".into(),
        reason: format!("{h} x {w} does not fit the image crate's u32 sides"),
    };
    let (wu, hu) = (u32::try_from(w).map_err(|_| too_big())?, u32::try_from(h).map_err(|_| too_big())?);
    let to_u8 = |v: f32| (clamp_unit(v) * 255.0).round() as u8; // NaN as u8 is 0
    let n = h * w;
    match c {
        1 => {
            let raw: Vec<u8> = image.plane(0).iter().map(|&v| to_u8(v)).collect();
            GrayImage::from_raw(wu, hu, raw).map(DynamicImage::ImageLuma8).ok_or_else(too_big)
        }
        3 => {
            let mut raw = Vec::with_capacity(3 * n);
            for i in 0..n {
                for ch in 0..3 {
                    raw.push(to_u8(image.as_slice()[ch * n + i]));
                }
            }
            RgbImage::from_raw(wu, hu, raw).map(DynamicImage::ImageRgb8).ok_or_else(too_big)
        }
        _ => Err(Error::Image {
            what: "to_dynamic_image".into(),
            reason: format!("has {c} channels; only 1 (gray) or 3 (RGB) convert to an 8-bit image"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{GrayImage, Luma, Rgb, Rgba, RgbaImage};

    #[test]
    fn gray_file_is_read_as_is_and_replicated_for_rgb() {
        let mut g = GrayImage::new(1, 1);
        g.put_pixel(0, 0, Luma([102])); // 102 / 255 = 0.4
        let dynimg = DynamicImage::ImageLuma8(g);
        let gray = from_dynamic_image(&dynimg, Channels::Gray).unwrap();
        assert_eq!(gray.as_slice(), &[0.4]);
        let rgb = from_dynamic_image(&dynimg, Channels::Rgb).unwrap();
        assert_eq!(rgb.as_slice(), &[0.4, 0.4, 0.4]);
    }

    #[test]
    fn colour_to_gray_uses_601_weights() {
        // Pure red, green, blue: Pillow's `convert("L")` gives 76, 150, 29 (0.299, 0.587 and
        // 0.114 of 255, rounded in 16-bit fixed point); deeper colour keeps the exact weights.
        let mut rgb = RgbImage::new(3, 1);
        rgb.put_pixel(0, 0, Rgb([255, 0, 0]));
        rgb.put_pixel(1, 0, Rgb([0, 255, 0]));
        rgb.put_pixel(2, 0, Rgb([0, 0, 255]));
        let gray = from_dynamic_image(&DynamicImage::ImageRgb8(rgb), Channels::Gray).unwrap();
        assert_eq!(gray.shape(), (1, 1, 3));
        assert_eq!(gray.as_slice(), &[76.0 / 255.0, 150.0 / 255.0, 29.0 / 255.0]);
        let mut deep = ::image::ImageBuffer::<Rgb<u16>, Vec<u16>>::new(3, 1);
        deep.put_pixel(0, 0, Rgb([65535, 0, 0]));
        deep.put_pixel(1, 0, Rgb([0, 65535, 0]));
        deep.put_pixel(2, 0, Rgb([0, 0, 65535]));
        let gray = from_dynamic_image(&DynamicImage::ImageRgb16(deep), Channels::Gray).unwrap();
        for (got, want) in gray.as_slice().iter().zip([0.299, 0.587, 0.114]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn alpha_is_dropped() {
        let mut rgba = RgbaImage::new(1, 1);
        rgba.put_pixel(0, 0, Rgba([255, 0, 255, 0])); // fully transparent magenta
        let img = from_dynamic_image(&DynamicImage::ImageRgba8(rgba), Channels::Rgb).unwrap();
        assert_eq!(img.as_slice(), &[1.0, 0.0, 1.0]);
    }

    #[test]
    fn hdr_values_are_clamped_and_nan_is_an_error() {
        let buf = ::image::Rgb32FImage::from_raw(2, 1, vec![2.0, -1.0, 0.5, 0.0, 0.25, 1.0]).unwrap();
        let img = from_dynamic_image(&DynamicImage::ImageRgb32F(buf), Channels::Rgb).unwrap();
        assert_eq!(img.as_slice(), &[1.0, 0.0, 0.0, 0.25, 0.5, 1.0]);
        let nan = ::image::Rgb32FImage::from_raw(1, 1, vec![f32::NAN, 0.0, 0.0]).unwrap();
        let err = from_dynamic_image(&DynamicImage::ImageRgb32F(nan), Channels::Rgb).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    }

    #[test]
    fn u8_round_trip_is_exact() {
        let rgb = RgbImage::from_fn(5, 3, |x, y| Rgb([(x * 50) as u8, (y * 100) as u8, (x * y * 17) as u8]));
        let dynimg = DynamicImage::ImageRgb8(rgb);
        let chw = from_dynamic_image(&dynimg, Channels::Rgb).unwrap();
        assert_eq!(to_dynamic_image(&chw).unwrap(), dynimg);
        let two = ChwImage::filled(2, 1, 1, 0.0).unwrap();
        assert!(matches!(to_dynamic_image(&two), Err(Error::Image { .. })));
    }

    /// The CRC-32 (IEEE) that PNG chunks carry (flate2's, the one gzip uses).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(bytes);
        crc.sum()
    }

    /// A 2 x 2 RGB PNG whose IHDR states `width x height` instead, with its CRC fixed up so
    /// that the decoder believes it.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, Rgb([1, 2, 3])))
            .write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png)
            .unwrap();
        // Signature (8), IHDR length (4), "IHDR" (4), width, height; the CRC covers "IHDR" + 13.
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// Sizes stated by the header beyond the limits are an `Image` error naming the file (they
    /// used to reach the decoder: a codec error, or a buffer of the stated size allocated up
    /// front when within the decoder's default 512 MiB).
    #[test]
    fn header_sizes_beyond_the_limits_are_refused_before_decoding() {
        let dir = std::env::temp_dir().join(format!("pg-load-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.png");
        std::fs::write(&ok, png_claiming(2, 2)).unwrap();
        assert_eq!(load_image(&ok).unwrap().shape(), (3, 2, 2));
        // One side past 65,536; then 2^27 + 1 pixels in sides within it; then 2^30 x 2^30.
        for (w, h) in [(65_537, 1), (1 << 16, (1 << 11) + 1), (1 << 30, 1 << 30)] {
            let path = dir.join(format!("claims-{w}x{h}.png"));
            std::fs::write(&path, png_claiming(w, h)).unwrap();
            let err = load_image(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Image { .. }), "{w} x {h}: {msg}");
            assert!(msg.contains(&format!("claims-{w}x{h}.png")) && msg.contains("beyond the limits"), "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
