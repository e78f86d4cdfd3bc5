//! Datasets on disk, as labelled image sets ready for a model ([`ImageDataset`]: `[N x C x H x W]`
//! f32 pixels in `[0, 1]`, labels, class count and, where the files name them, class names).
//!
//! Three formats:
//!
//! - **IDX** ([`load_mnist`]): MNIST and Fashion-MNIST, `{train,t10k}-{images-idx3,labels-idx1}-ubyte`
//!   raw or gzipped; `1 x 28 x 28`.
//! - **CIFAR-10 binary** ([`load_cifar10`]): `cifar-10-batches-bin/`, `data_batch_{1..5}.bin` and
//!   `test_batch.bin`, records of one label byte and 3072 pixel bytes; `3 x 32 x 32`, class
//!   names from `batches.meta.txt`.
//! - **Image folder** ([`load_image_folder`], [`load_image_folder_split`]): torchvision's
//!   `ImageFolder` layout, one sub-folder per class (names sorted, index = position), any format
//!   the `image` crate decodes, every image resized to one size and converted to 1 or 3 channels.
//!
//! [`load_dataset`] tells them apart by the files present.
//!
//! ```
//! use patchgraph::data::{Split, load_dataset, load_mnist};
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
//! let test = load_mnist(dir, Split::Test).unwrap();
//! assert_eq!((test.len(), test.classes, test.shape()), (1000, 10, (1, 28, 28)));
//! let (image, label) = test.get(0).unwrap();
//! assert_eq!((image.shape(), label), ((1, 28, 28), 6));
//! // The same files, found by their names.
//! assert_eq!(load_dataset(dir, Split::Test, None, None).unwrap(), test);
//! ```

mod cifar;
mod folder;
mod idx;

pub use cifar::{CIFAR10_RECORD_BYTES, load_cifar10};
pub use folder::{image_folder_classes, load_image_folder, load_image_folder_split};
pub use idx::{IdxArray, read_idx, read_idx_bytes};

use crate::error::{Error, Result};
use crate::image::{Channels, ChwImage};
use std::path::Path;

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training part: `train-*` IDX files, CIFAR-10's `data_batch_1.bin` ..
    /// `data_batch_5.bin`, an image folder's `train/`.
    Train,
    /// The test part: `t10k-*` IDX files, CIFAR-10's `test_batch.bin`, an image folder's `test/`
    /// (or `val/` where there is no `test/`).
    Test,
}

/// Labelled images `[N x C x H x W]`, pixels scaled to `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    pixels: Vec<f32>,
    labels: Vec<usize>,
    shape: (usize, usize, usize),
    /// Number of classes (10 for IDX files unless told otherwise, see [`load_mnist_with_classes`];
    /// 10 for CIFAR-10; the training split's class folders for an image folder).
    pub classes: usize,
    class_names: Option<Vec<String>>,
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
        Ok(ImageDataset { pixels, labels, shape, classes, class_names: None })
    }

    /// Names the classes: `names[k]` is the name of label `k`. Errors ([`Error::Shape`]) unless
    /// there is exactly one name per class.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.classes {
            return Err(Error::shape(
                "dataset class names",
                format!("{} names (one per class)", self.classes),
                format!("{} names", names.len()),
            ));
        }
        self.class_names = Some(names);
        Ok(self)
    }

    /// The class names, label order, where the dataset's files name them (CIFAR-10's
    /// `batches.meta.txt`, an image folder's sub-folders); `None` for IDX files.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
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

/// The number of classes [`load_mnist`] and [`load_dataset`] give IDX files: 10, the digits of
/// MNIST and the garments of Fashion-MNIST.
pub const IDX_DEFAULT_CLASSES: usize = 10;

/// Reads `{train,t10k}-images-idx3-ubyte[.gz]` and `{train,t10k}-labels-idx1-ubyte[.gz]` from
/// `dir` (MNIST, Fashion-MNIST): u8 pixels scaled by 1/255, one channel, 10 classes
/// ([`IDX_DEFAULT_CLASSES`]). The image and label counts must agree; a label of 10 or more is an
/// error. [`load_mnist_with_classes`] takes another class count.
pub fn load_mnist(dir: impl AsRef<Path>, split: Split) -> Result<ImageDataset> {
    load_mnist_with_classes(dir, split, IDX_DEFAULT_CLASSES)
}

/// [`load_mnist`] for IDX files with `classes` classes: every label must be below `classes`,
/// and the dataset has `classes` classes whatever labels occur (a split that lacks a class
/// still numbers the others as the full dataset does).
///
/// Errors: [`Error::Invalid`] for `classes` 0; [`Error::Format`] naming the labels file, the
/// label's index and its value for a label `>= classes`, or naming a file whose dimensions do
/// not fit (3 for the images, 1 for the labels, equal counts); [`read_idx`]'s errors.
///
/// ```
/// use patchgraph::data::{Split, load_mnist_with_classes};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
/// assert_eq!(load_mnist_with_classes(dir, Split::Test, 12).unwrap().classes, 12);
/// // The digits go up to 9: 5 classes are too few, and the error says where.
/// let msg = load_mnist_with_classes(dir, Split::Test, 5).unwrap_err().to_string();
/// assert!(msg.contains("t10k-labels-idx1-ubyte") && msg.contains("is not below 5 classes"), "{msg}");
/// ```
pub fn load_mnist_with_classes(dir: impl AsRef<Path>, split: Split, classes: usize) -> Result<ImageDataset> {
    let dir = dir.as_ref();
    if classes == 0 {
        return Err(Error::invalid("IDX class count", "must be at least 1"));
    }
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
    let shown = |p: &Path| p.display().to_string();
    // The labels first: they are small, and a bad one is reported without decoding the images.
    let labels = read_idx(&labels_path)?;
    let [m] = labels.dims[..] else {
        return Err(Error::Format {
            path: shown(&labels_path),
            reason: format!("expected 1 dimension, found {:?}", labels.dims),
        });
    };
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|&(_, &l)| usize::from(l) >= classes) {
        return Err(Error::Format {
            path: shown(&labels_path),
            reason: format!("label[{i}] = {l} is not below {classes} classes"),
        });
    }
    let images = read_idx(&images_path)?;
    let [n, h, w] = images.dims[..] else {
        return Err(Error::Format {
            path: shown(&images_path),
            reason: format!("expected 3 dimensions (count, rows, columns), found {:?}", images.dims),
        });
    };
    if n != m {
        return Err(Error::Format {
            path: shown(&labels_path),
            reason: format!("{m} labels for {n} images in {}", shown(&images_path)),
        });
    }
    let labels: Vec<usize> = labels.data.iter().map(|&l| usize::from(l)).collect();
    let pixels = images.data.iter().map(|&p| f32::from(p) / 255.0).collect();
    ImageDataset::new(pixels, labels, (1, h, w), classes)
}

/// The size [`load_dataset`] resizes image-folder images to when not told: `32 x 32`, CIFAR's.
pub const DEFAULT_FOLDER_IMAGE_SIZE: (usize, usize) = (32, 32);

/// Loads `split` of the dataset in `dir`, telling the format by the files present (looked for in
/// this order):
///
/// 1. **IDX** (MNIST, Fashion-MNIST): `dir` holds `train-images-idx3-ubyte[.gz]` or
///    `t10k-images-idx3-ubyte[.gz]`: [`load_mnist`], 10 classes ([`IDX_DEFAULT_CLASSES`]).
/// 2. **CIFAR-10 binary**: `dir` or `dir/cifar-10-batches-bin` holds `data_batch_1.bin` or
///    `test_batch.bin`: [`load_cifar10`].
/// 3. **Image folder**: `dir` has a `train/`, `test/` or `val/` sub-folder (of class folders):
///    [`load_image_folder_split`], resized to `image_size` `(height, width)`, default
///    [`DEFAULT_FOLDER_IMAGE_SIZE`] (`32 x 32`), with `channels` 1 (gray) or 3 (RGB), default 3.
///
/// IDX and CIFAR-10 images are returned as stored (`1 x 28 x 28`, `3 x 32 x 32`): an
/// `image_size` or `channels` other than theirs is an error, not a conversion.
///
/// Errors: [`Error::Invalid`] for `channels` other than 1 or 3, a zero size, a size or channel
/// count that an IDX or CIFAR-10 dataset does not have, or a `dir` in none of the layouts (the
/// message lists what was looked for); otherwise the loader's errors.
pub fn load_dataset(
    dir: impl AsRef<Path>,
    split: Split,
    image_size: Option<(usize, usize)>,
    channels: Option<usize>,
) -> Result<ImageDataset> {
    let dir = dir.as_ref();
    let channels = match channels {
        None => None,
        Some(1) => Some(Channels::Gray),
        Some(3) => Some(Channels::Rgb),
        Some(c) => return Err(Error::invalid("dataset channels", format!("{c}: expected 1 (gray) or 3 (RGB)"))),
    };
    if let Some((h, w)) = image_size.filter(|&(h, w)| h == 0 || w == 0) {
        return Err(Error::invalid("dataset image size", format!("{h} x {w}: both sides must be at least 1")));
    }
    // A fixed-shape format: what was asked must be what the files hold.
    let fixed = |data: ImageDataset, format: &str| -> Result<ImageDataset> {
        let (c, h, w) = data.shape();
        let size_ok = image_size.is_none_or(|s| s == (h, w));
        let channels_ok = channels.is_none_or(|ch| ch.count() == c);
        if size_ok && channels_ok {
            return Ok(data);
        }
        let asked = format!(
            "{} x {}",
            channels.map_or("C".to_string(), |ch| ch.count().to_string()),
            image_size.map_or("H x W".to_string(), |(h, w)| format!("{h} x {w}"))
        );
        Err(Error::invalid(
            "dataset image shape",
            format!(
                "{} holds {format} images of {c} x {h} x {w}, asked for {asked}; {format} images are not resized or converted",
                dir.display()
            ),
        ))
    };
    let idx_names = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"];
    if idx_names.iter().any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file()) {
        return fixed(load_mnist(dir, split)?, "IDX");
    }
    let cifar = cifar::resolve_dir(dir);
    if ["data_batch_1.bin", "test_batch.bin"].iter().any(|n| cifar.join(n).is_file()) {
        return fixed(load_cifar10(dir, split)?, "CIFAR-10");
    }
    if ["train", "test", "val"].iter().any(|n| dir.join(n).is_dir()) {
        return load_image_folder_split(
            dir,
            split,
            image_size.unwrap_or(DEFAULT_FOLDER_IMAGE_SIZE),
            channels.unwrap_or(Channels::Rgb),
        );
    }
    Err(Error::invalid(
        "dataset directory",
        format!(
            "{}{} is in none of the known layouts; looked for train-images-idx3-ubyte[.gz] or \
             t10k-images-idx3-ubyte[.gz] (IDX, MNIST), data_batch_1.bin or test_batch.bin in it or in \
             cifar-10-batches-bin/ (CIFAR-10 binary), a train/, test/ or val/ folder of class \
             sub-folders (image folder)",
            dir.display(),
            if dir.is_dir() { "" } else { " (not a directory)" }
        ),
    ))
}

/// Temporary directories for the loaders' tests, removed when dropped.
#[cfg(test)]
pub(crate) mod testdir {
    use std::path::{Path, PathBuf};

    /// `<temp>/pg-<name>-<pid>`, created empty; removed (with its contents) on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pg-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
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

    /// Writes a 1-dimensional u8 IDX file of `labels` and a `[n x 1 x 1]` image file to `dir`.
    fn write_idx_pair(dir: &Path, labels: &[u8]) {
        let n = labels.len() as u8;
        let mut lab = vec![0, 0, 8, 1, 0, 0, 0, n];
        lab.extend_from_slice(labels);
        std::fs::write(dir.join("train-labels-idx1-ubyte"), &lab).unwrap();
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 1, 0, 0, 0, 1];
        img.extend(std::iter::repeat_n(7u8, labels.len()));
        std::fs::write(dir.join("train-images-idx3-ubyte"), &img).unwrap();
    }

    /// A label of 200 used to make a dataset of 201 classes; it is an error naming the labels
    /// file, the label's index and its value, and the class count is 10 whatever labels occur.
    #[test]
    fn idx_labels_beyond_the_classes_are_errors() {
        let tmp = testdir::TempDir::new("idx-labels");
        write_idx_pair(tmp.path(), &[3, 1, 200, 4]);
        let err = load_mnist(tmp.path(), Split::Train).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{msg}");
        assert!(msg.contains("train-labels-idx1-ubyte") && msg.contains("label[2] = 200"), "{msg}");
        let msg = load_dataset(tmp.path(), Split::Train, None, None).unwrap_err().to_string();
        assert!(msg.contains("label[2] = 200") && msg.contains("10 classes"), "{msg}");
        // With more classes it loads, with exactly that many.
        let data = load_mnist_with_classes(tmp.path(), Split::Train, 256).unwrap();
        assert_eq!((data.classes, data.labels()), (256, &[3, 1, 200, 4][..]));
        // Labels 0..=4 only: still the 10 classes of MNIST, not 5.
        write_idx_pair(tmp.path(), &[0, 4, 2]);
        assert_eq!(load_mnist(tmp.path(), Split::Train).unwrap().classes, 10);
        let msg = load_mnist_with_classes(tmp.path(), Split::Train, 4).unwrap_err().to_string();
        assert!(msg.contains("label[1] = 4 is not below 4 classes"), "{msg}");
        assert!(matches!(load_mnist_with_classes(tmp.path(), Split::Train, 0), Err(Error::Invalid { .. })));
    }

    #[test]
    fn load_dataset_tells_the_formats_apart() {
        // IDX: the bundled MNIST subset; its fixed shape may be restated, not changed.
        let mnist = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k");
        let test = load_dataset(mnist, Split::Test, Some((28, 28)), Some(1)).unwrap();
        assert_eq!((test.len(), test.shape(), test.class_names()), (1000, (1, 28, 28), None));
        let msg = load_dataset(mnist, Split::Test, Some((32, 32)), None).unwrap_err().to_string();
        assert!(msg.contains("IDX images of 1 x 28 x 28") && msg.contains("asked for C x 32 x 32"), "{msg}");

        // CIFAR-10, found in the archive's cifar-10-batches-bin/.
        let tmp = testdir::TempDir::new("load-dataset");
        cifar::fixture::write(&tmp.path().join("cifar/cifar-10-batches-bin"));
        let train = load_dataset(tmp.path().join("cifar"), Split::Train, None, Some(3)).unwrap();
        assert_eq!((train.len(), train.shape(), train.classes), (9, (3, 32, 32), 10));
        assert_eq!(train, load_cifar10(tmp.path().join("cifar"), Split::Train).unwrap());
        let msg = load_dataset(tmp.path().join("cifar"), Split::Test, None, Some(1)).unwrap_err().to_string();
        assert!(msg.contains("CIFAR-10 images of 3 x 32 x 32"), "{msg}");

        // Image folder: 32 x 32 RGB unless told.
        folder::fixture::write(&tmp.path().join("pets/train"));
        folder::fixture::write(&tmp.path().join("pets/test"));
        let pets = load_dataset(tmp.path().join("pets"), Split::Test, None, None).unwrap();
        assert_eq!((pets.len(), pets.shape(), pets.labels()), (4, (3, 32, 32), &[0, 0, 0, 1][..]));
        let small = load_dataset(tmp.path().join("pets"), Split::Train, Some((4, 6)), Some(1)).unwrap();
        assert_eq!(small.shape(), (1, 4, 6));
        assert_eq!(small.class_names().unwrap(), ["cat", "dog"]);

        // Nothing known: the error lists what was looked for.
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        let msg = load_dataset(tmp.path().join("empty"), Split::Train, None, None).unwrap_err().to_string();
        for wanted in ["train-images-idx3-ubyte", "data_batch_1.bin", "cifar-10-batches-bin", "train/"] {
            assert!(msg.contains(wanted), "{wanted}: {msg}");
        }
        let msg = load_dataset(tmp.path().join("nowhere"), Split::Train, None, None).unwrap_err().to_string();
        assert!(msg.contains("not a directory"), "{msg}");
        let msg = load_dataset(mnist, Split::Train, None, Some(2)).unwrap_err().to_string();
        assert!(msg.contains("expected 1 (gray) or 3 (RGB)"), "{msg}");
        let msg = load_dataset(mnist, Split::Train, Some((0, 3)), None).unwrap_err().to_string();
        assert!(msg.contains("0 x 3"), "{msg}");
    }

    #[test]
    fn class_names_must_match_the_class_count() {
        let data = ImageDataset::new(vec![0.0; 2], vec![0, 1], (1, 1, 1), 2).unwrap();
        assert_eq!(data.class_names(), None);
        let named = data.clone().with_class_names(vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(named.class_names().unwrap(), ["a", "b"]);
        assert!(matches!(data.with_class_names(vec!["a".into()]), Err(Error::Shape { .. })));
    }
}
