//! [`ChwImage`]: an image as f32 planes `[C x H x W]`, row-major (PyTorch's layout for one image).

use crate::error::{Error, Result};

/// An image as `C` planes of `H x W` f32 values, row-major: value `(c, y, x)` lives at
/// `data[(c * H + y) * W + x]`. The layout of one image in a PyTorch `[N, C, H, W]` tensor.
///
/// Never empty: `C`, `H` and `W` are all at least 1 (every constructor checks it), so resizing,
/// cropping and patchifying never meet a zero-sized image.
///
/// ```
/// use patchgraph::image::ChwImage;
/// // 1 channel, 2 rows, 3 columns.
/// let img = ChwImage::new(1, 2, 3, vec![0., 1., 2., 3., 4., 5.]).unwrap();
/// assert_eq!(img.shape(), (1, 2, 3));
/// assert_eq!(img.get(0, 1, 2), 5.0);
/// assert_eq!(img.plane(0), &[0., 1., 2., 3., 4., 5.]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ChwImage {
    channels: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

/// `c * h * w`, or an error if a dimension is zero or the product overflows.
pub(crate) fn checked_len(what: &str, channels: usize, height: usize, width: usize) -> Result<usize> {
    if channels == 0 || height == 0 || width == 0 {
        return Err(Error::Image {
            what: what.to_string(),
            reason: format!("is empty ({channels} x {height} x {width}); every dimension must be at least 1"),
        });
    }
    channels.checked_mul(height).and_then(|n| n.checked_mul(width)).ok_or_else(|| Error::Image {
        what: what.to_string(),
        reason: format!("{channels} x {height} x {width} values overflow usize"),
    })
}

impl ChwImage {
    /// Wraps `data` (`[C x H x W]` row-major) as an image.
    ///
    /// Errors ([`Error::Image`]) if a dimension is zero, and ([`Error::Shape`]) if
    /// `data.len() != channels * height * width`.
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        let len = checked_len("ChwImage::new", channels, height, width)?;
        if data.len() != len {
            return Err(Error::shape(
                "image data",
                format!("[{channels} x {height} x {width}] = {len} values"),
                format!("{} values", data.len()),
            ));
        }
        Ok(ChwImage { channels, height, width, data })
    }

    /// A `[C x H x W]` image with every value `value`. Errors if a dimension is zero.
    pub fn filled(channels: usize, height: usize, width: usize, value: f32) -> Result<Self> {
        let len = checked_len("ChwImage::filled", channels, height, width)?;
        Ok(ChwImage { channels, height, width, data: vec![value; len] })
    }

    /// Builds a `[C x H x W]` image from a function of `(c, y, x)`. Errors if a dimension is zero.
    pub fn from_fn(
        channels: usize,
        height: usize,
        width: usize,
        mut f: impl FnMut(usize, usize, usize) -> f32,
    ) -> Result<Self> {
        let len = checked_len("ChwImage::from_fn", channels, height, width)?;
        let mut data = Vec::with_capacity(len);
        for c in 0..channels {
            for y in 0..height {
                for x in 0..width {
                    data.push(f(c, y, x));
                }
            }
        }
        Ok(ChwImage { channels, height, width, data })
    }

    /// Number of channels `C` (3 for RGB, 1 for grayscale).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Height `H` in pixels (number of rows).
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width `W` in pixels (number of columns).
    pub fn width(&self) -> usize {
        self.width
    }

    /// `(C, H, W)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// All values, `[C x H x W]` row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// All values, `[C x H x W]` row-major, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the image, returning its `[C x H x W]` row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Plane `c`: `[H x W]` row-major (panics if `c >= C`: an internal invariant).
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// Plane `c`, mutable (panics if `c >= C`).
    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.height * self.width;
        &mut self.data[c * n..(c + 1) * n]
    }

    /// Row `y` of plane `c`: `[W]` (panics if out of range).
    pub fn row(&self, c: usize, y: usize) -> &[f32] {
        let start = (c * self.height + y) * self.width;
        &self.data[start..start + self.width]
    }

    /// Value at channel `c`, row `y`, column `x` (panics if out of range).
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        assert!(c < self.channels && y < self.height && x < self.width, "ChwImage::get out of range");
        self.data[(c * self.height + y) * self.width + x]
    }

    /// Sets the value at channel `c`, row `y`, column `x` (panics if out of range).
    pub fn set(&mut self, c: usize, y: usize, x: usize, value: f32) {
        assert!(c < self.channels && y < self.height && x < self.width, "ChwImage::set out of range");
        self.data[(c * self.height + y) * self.width + x] = value;
    }

    /// Clamps every value into `[lo, hi]` in place: below `lo` becomes `lo`, above `hi` becomes
    /// `hi`, NaN stays NaN. Never panics (unlike `f32::clamp`); with `lo > hi` the `lo` test wins.
    pub fn clamp_in_place(&mut self, lo: f32, hi: f32) {
        for v in &mut self.data {
            if *v < lo {
                *v = lo;
            } else if *v > hi {
                *v = hi;
            }
        }
    }
}
