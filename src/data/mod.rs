//! Datasets on disk: the IDX format of MNIST and Fashion-MNIST (raw or gzipped), as labelled
//! image sets ready for a model.
//!
//! ```
//! use patchgraph::data::{Split, load_mnist};
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
//! let test = load_mnist(dir, Split::Test).unwrap();
//! assert_eq!((test.len(), test.classes, test.shape()), (1000, 10, (1, 28, 28)));
//! let (image, label) = test.get(0).unwrap();
//! assert_eq!((image.shape(), label), ((1, 28, 28), 6));
//! ```

mod idx;

pub use idx::{IdxArray, read_idx, read_idx_bytes};

use crate::error::{Error, Result};
use crate::image::ChwImage;
use std::path::Path;

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `train-*` files.
    Train,
    /// `t10k-*` files.
    Test,
}

/// Labelled images `[N x C x H x W]`, pixels scaled to `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    pixels: Vec<f32>,
    labels: Vec<usize>,
    shape: (usize, usize, usize),
    /// Number of classes (`max label + 1`).
    pub classes: usize,
}

impl ImageDataset {
    /// From `[N x C x H x W]` pixels and `N` labels (checked).
    pub fn new(pixels: Vec<f32>, labels: Vec<usize>, shape: (usize, usize, usize), classes: usize) -> Result<Self> {
        let (c, h, w) = shape;
        if pixels.len() != labels.len() * c * h * w {
            return Err(Error::shape(
                "dataset pixels",
                format!("{} images x {c} x {h} x {w}", labels.len()),
                format!("{} values", pixels.len()),
            ));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
            return Err(Error::invalid("dataset label", format!("label[{i}] = {l} is not below {classes} classes")));
        }
        Ok(ImageDataset { pixels, labels, shape, classes })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(C, H, W)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// The labels.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Image `i` and its label.
    pub fn get(&self, i: usize) -> Result<(ChwImage, usize)> {
        let (c, h, w) = self.shape;
        let size = c * h * w;
        let label = *self
            .labels
            .get(i)
            .ok_or_else(|| Error::invalid("dataset index", format!("{i} is not below {} images", self.len())))?;
        Ok((ChwImage::new(c, h, w, self.pixels[i * size..(i + 1) * size].to_vec())?, label))
    }
}

/// Reads `{train,t10k}-images-idx3-ubyte[.gz]` and `{train,t10k}-labels-idx1-ubyte[.gz]` from
/// `dir` (MNIST, Fashion-MNIST): u8 pixels scaled by 1/255, one channel. The image and label
/// counts must agree.
pub fn load_mnist(dir: impl AsRef<Path>, split: Split) -> Result<ImageDataset> {
    let dir = dir.as_ref();
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let find = |stem: &str| {
        let raw = dir.join(stem);
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() { gz } else { raw }
    };
    let images_path = find(&format!("{prefix}-images-idx3-ubyte"));
    let labels_path = find(&format!("{prefix}-labels-idx1-ubyte"));
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    let shown = |p: &Path| p.display().to_string();
    let [n, h, w] = images.dims[..] else {
        return Err(Error::Format {
            path: shown(&images_path),
            reason: format!("expected 3 dimensions (count, rows, columns), found {:?}", images.dims),
        });
    };
    let [m] = labels.dims[..] else {
        return Err(Error::Format {
            path: shown(&labels_path),
            reason: format!("expected 1 dimension, found {:?}", labels.dims),
        });
    };
    if n != m {
        return Err(Error::Format {
            path: shown(&labels_path),
            reason: format!("{m} labels for {n} images in {}", shown(&images_path)),
        });
    }
    let labels: Vec<usize> = labels.data.iter().map(|&l| l as usize).collect();
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let pixels = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    ImageDataset::new(pixels, labels, (1, h, w), classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled subset as its provenance describes it: 4,000 training and 1,000 test digits,
    /// 400 and 100 per class, 28 x 28; the first labels as the files hold them (read with
    /// Python's gzip module: 5, 7, 3, 1 and 6, 8, 0, 1), and the first training digit's pixel
    /// sum 19895 / 255.
    #[test]
    fn bundled_mnist_subset() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
        let train = load_mnist(dir, Split::Train).unwrap();
        let test = load_mnist(dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len(), train.classes), (4000, 1000, 10));
        for c in 0..10 {
            assert_eq!(train.labels().iter().filter(|&&l| l == c).count(), 400);
            assert_eq!(test.labels().iter().filter(|&&l| l == c).count(), 100);
        }
        assert_eq!(&train.labels()[..4], &[5, 7, 3, 1]);
        assert_eq!(&test.labels()[..4], &[6, 8, 0, 1]);
        let (first, _) = train.get(0).unwrap();
        let sum: f32 = first.as_slice().iter().sum();
        assert!((sum - 19895.0 / 255.0).abs() < 1e-3, "{sum}");
        assert!(train.get(4000).is_err());
    }

    #[test]
    fn label_count_mismatch_is_an_error() {
        let dir = std::env::temp_dir().join(format!("pg-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend([0u8; 8]);
        std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 0]).unwrap();
        let err = load_mnist(&dir, Split::Train).unwrap_err().to_string();
        assert!(err.contains("3 labels for 2 images"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
