//! Image folders, torchvision's `ImageFolder` layout: `root/<class>/<image>`, one sub-folder per
//! class.
//!
//! - Classes are the sub-folders of `root`, sorted by name; a class's index (its label) is its
//!   position in that order.
//! - A class's images are the files under its folder, sub-folders included, in torchvision's
//!   order: by folder path, then by file name (byte order, as Python sorts strings).
//! - A file counts as an image if the `image` crate reads its extension (case-insensitive:
//!   `png`, `jpg`/`jpeg`, `gif`, `bmp`, `tif`/`tiff`, `webp`, `pnm`/`ppm`/`pgm`/`pbm`/`pam`,
//!   `tga`, `ico`, `hdr`, `exr`, `ff`, `qoi`, ...); other files are skipped, and so is anything
//!   whose name starts with `.` (hidden files and folders, unlike torchvision, which turns a
//!   stray `.ipynb_checkpoints/` into a class). A file with an image extension that does not
//!   decode is an error naming it.
//! - Every image is decoded with [`crate::image::load_image_with`] (1 or 3 channels, see
//!   [`Channels`]) and resized to exactly the requested `(height, width)` with
//!   [`crate::image::resize_exact`] and [`Interpolation::Bilinear`], Pillow's antialiased
//!   bilinear (torchvision's `Resize((h, w))` default), aspect ratio not kept.
//!
//! ```
//! use image::{Rgb, RgbImage};
//! use patchgraph::data::load_image_folder;
//! use patchgraph::image::Channels;
//! let root = std::env::temp_dir().join(format!("pg-folder-doc-{}", std::process::id()));
//! for (class, colour) in [("red", [255, 0, 0]), ("blue", [0, 0, 255])] {
//!     std::fs::create_dir_all(root.join(class)).unwrap();
//!     RgbImage::from_pixel(8, 6, Rgb(colour)).save(root.join(class).join("a.png")).unwrap();
//! }
//! let data = load_image_folder(&root, (4, 4), Channels::Rgb).unwrap();
//! assert_eq!(data.class_names().unwrap(), &["blue", "red"]); // sorted: blue is class 0
//! assert_eq!((data.len(), data.shape(), data.labels()), (2, (3, 4, 4), &[0, 1][..]));
//! let (red, _) = data.get(1).unwrap();
//! assert!((red.get(0, 3, 3) - 1.0).abs() < 1e-6 && red.get(2, 3, 3).abs() < 1e-6);
//! std::fs::remove_dir_all(&root).unwrap();
//! ```

use super::{ImageDataset, Split};
use crate::error::{Error, Result};
use crate::image::{Channels, Interpolation, load_image_with, resize_exact};
use ::image::ImageFormat;
use rayon::prelude::*;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Whether a file or folder name starts with `.`.
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Whether the `image` crate (as built) reads files with this name's extension.
fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(ImageFormat::from_extension).is_some_and(|f| f.reading_enabled())
}

/// The visible entries of `dir` with their (symlink-following) kind: `(name, path, is_dir)`.
fn visible_entries(dir: &Path) -> Result<Vec<(OsString, PathBuf, bool)>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        let is_dir = std::fs::metadata(&path).map_err(io(&path))?.is_dir();
        out.push((name, path, is_dir));
    }
    Ok(out)
}

/// The class folders of `root`: `(name, path)`, sorted by name.
fn class_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !root.is_dir() {
        return Err(Error::invalid("image folder", format!("{} is not a directory", root.display())));
    }
    let mut classes = Vec::new();
    for (name, path, is_dir) in visible_entries(root)? {
        if !is_dir {
            continue;
        }
        let name = name.into_string().map_err(|name| {
            Error::invalid("image folder class", format!("folder name {name:?} in {} is not UTF-8", root.display()))
        })?;
        classes.push((name, path));
    }
    classes.sort();
    if classes.is_empty() {
        return Err(Error::invalid(
            "image folder",
            format!("{} has no class sub-folders (expected root/<class>/<image files>)", root.display()),
        ));
    }
    Ok(classes)
}

/// The class names of the image folder `root` (its visible sub-folders, sorted): what
/// [`load_image_folder`] numbers 0, 1, ... Errors ([`Error::Invalid`]) if `root` is not a
/// folder, has no sub-folders, or a sub-folder's name is not UTF-8.
pub fn image_folder_classes(root: impl AsRef<Path>) -> Result<Vec<String>> {
    Ok(class_folders(root.as_ref())?.into_iter().map(|(name, _)| name).collect())
}

/// The image files under `dir`, recursively, in torchvision's order (folder path, then file
/// name). Symlinks are followed; a folder already visited (a link cycle) is not entered again.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(PathBuf, OsString)> = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let real = std::fs::canonicalize(&folder).map_err(|source| Error::Io { path: folder.clone(), source })?;
        if !visited.insert(real) {
            continue;
        }
        for (name, path, is_dir) in visible_entries(&folder)? {
            if is_dir {
                stack.push(path);
            } else if has_image_extension(&path) {
                found.push((folder.clone(), name));
            }
        }
    }
    // Python's sorted(os.walk(...)) then sorted(fnames): by the folder path as a string.
    found.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()).then_with(|| a.1.cmp(&b.1)));
    Ok(found.into_iter().map(|(folder, name)| folder.join(name)).collect())
}

/// Loads the image folder `root` (torchvision's `ImageFolder`; see the module docs for the
/// order and the files taken): every image decoded to `channels`, resized to exactly
/// `size = (height, width)` with Pillow's antialiased bilinear filter ([`resize_exact`],
/// [`Interpolation::Bilinear`]) and clamped to `[0, 1]`. `classes` is the number of class
/// folders; the class names are the folder names.
///
/// Errors: [`Error::Invalid`] for a zero `size`, a `root` that is not a folder or has no class
/// folders, or class folders without a single image file (all of them named); [`Error::Io`] for
/// an unreadable folder or file; [`Error::Codec`] naming a file that does not decode;
/// [`Error::Image`] naming a file whose size is beyond [`crate::limits::check_image_size`].
pub fn load_image_folder(root: impl AsRef<Path>, size: (usize, usize), channels: Channels) -> Result<ImageDataset> {
    load_folder(root.as_ref(), size, channels, None)
}

/// [`load_image_folder`], labels numbered by `names` (the training split's classes) when given:
/// a class folder of `root` is labelled with the position of its name in `names`, and one whose
/// name is not there is an error naming it; the dataset then has `names.len()` classes, named
/// `names`, even where `root` holds only some of them.
fn load_folder(
    root: &Path,
    (height, width): (usize, usize),
    channels: Channels,
    names: Option<&[String]>,
) -> Result<ImageDataset> {
    if height == 0 || width == 0 {
        return Err(Error::invalid("image folder size", format!("{height} x {width}: both sides must be at least 1")));
    }
    let classes = class_folders(root)?;
    let names: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => classes.iter().map(|(name, _)| name.clone()).collect(),
    };
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    let mut empty = Vec::new();
    for (name, path) in &classes {
        // By name, not by position: a split that lacks a class must not shift the others.
        let Some(label) = names.iter().position(|n| n == name) else {
            return Err(Error::invalid(
                "image folder splits",
                format!(
                    "class folder `{name}` ({}) is not a class of the training split (its classes: {})",
                    path.display(),
                    names.join(", ")
                ),
            ));
        };
        let found = image_files(path)?;
        if found.is_empty() {
            empty.push(name.as_str());
        }
        files.extend(found.into_iter().map(|f| (f, label)));
    }
    if !empty.is_empty() {
        return Err(Error::invalid(
            "image folder",
            format!("class folder(s) {} in {} hold no image files", empty.join(", "), root.display()),
        ));
    }
    let images: Vec<Result<Vec<f32>>> = files
        .par_iter()
        .map(|(path, _)| {
            let mut image = resize_exact(&load_image_with(path, channels)?, width, height, Interpolation::Bilinear)?;
            image.clamp_in_place(0.0, 1.0);
            Ok(image.into_vec())
        })
        .collect();
    let mut pixels = Vec::with_capacity(files.len() * channels.count() * height * width);
    for image in images {
        pixels.extend(image?); // the first failure in file order
    }
    let labels = files.iter().map(|(_, label)| *label).collect();
    ImageDataset::new(pixels, labels, (channels.count(), height, width), names.len())?.with_class_names(names)
}

/// Loads one split of an image folder with `root/train/` and `root/test/` (or `root/val/` where
/// there is no `test/`), each in the [`load_image_folder`] layout.
///
/// The training split's class folders define the classes: where `train/` exists, both splits
/// are labelled by class *name* with `train/`'s indices and have its class count and names, so
/// that a label means the same class in both, also when the test split holds only some of the
/// classes. A test class folder that `train/` lacks is an error (for either split: a model
/// trained on `train/` could not be tested on it). Without `train/`, the test split numbers its
/// own folders.
///
/// Errors: [`Error::Invalid`] if the split's folder is missing (naming what was looked for) or
/// the test split has a class that the training split has not (naming it); otherwise
/// [`load_image_folder`]'s errors.
pub fn load_image_folder_split(
    root: impl AsRef<Path>,
    split: Split,
    size: (usize, usize),
    channels: Channels,
) -> Result<ImageDataset> {
    let root = root.as_ref();
    let train = Some(root.join("train")).filter(|p| p.is_dir());
    let test = [root.join("test"), root.join("val")].into_iter().find(|p| p.is_dir());
    let wanted = match split {
        Split::Train => train.clone(),
        Split::Test => test.clone(),
    };
    let Some(wanted) = wanted else {
        let looked = match split {
            Split::Train => "train/",
            Split::Test => "test/ or val/",
        };
        return Err(Error::invalid("image folder", format!("{} has no {looked} folder", root.display())));
    };
    let Some(train) = train else {
        return load_image_folder(&wanted, size, channels);
    };
    let names = image_folder_classes(&train)?;
    if let Some(test) = &test {
        let extra: Vec<String> = image_folder_classes(test)?.into_iter().filter(|c| !names.contains(c)).collect();
        if !extra.is_empty() {
            return Err(Error::invalid(
                "image folder splits",
                format!(
                    "{} has class folder(s) {} that {} has not (its classes: {}); a label must mean the same class in both splits",
                    test.display(),
                    extra.join(", "),
                    train.display(),
                    names.join(", ")
                ),
            ));
        }
    }
    load_folder(&wanted, size, channels, Some(&names))
}

/// A small synthetic image folder, for this module's and [`super::load_dataset`]'s tests.
#[cfg(test)]
pub(crate) mod fixture {
    use ::image::{GrayImage, Luma, Rgb, RgbImage};
    use std::path::Path;

    /// The colour of pixel `(x, y)` of `cat/a.png` (3 wide, 2 high).
    pub(crate) fn a_pixel(x: u32, y: u32) -> [u8; 3] {
        [(10 * x + y) as u8, (100 + x) as u8, (200 + 20 * y) as u8]
    }

    /// Writes, under `root`:
    ///
    /// - `cat/a.png` 3 x 2 RGB ([`a_pixel`]), `cat/b.png` 5 x 4 pure red, `cat/sub/e.png` 2 x 2
    ///   pure blue, `cat/.hidden.png` (not an image: must be skipped);
    /// - `dog/c.png` 4 x 4 gray 102, `dog/notes.txt` (skipped);
    /// - `.git/x/y.png` (a hidden folder: no class), `.DS_Store` and `readme.txt` (files, no class).
    pub(crate) fn write(root: &Path) {
        for d in ["cat/sub", "dog", ".git/x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        RgbImage::from_fn(3, 2, |x, y| Rgb(a_pixel(x, y))).save(root.join("cat/a.png")).unwrap();
        RgbImage::from_pixel(5, 4, Rgb([255, 0, 0])).save(root.join("cat/b.png")).unwrap();
        RgbImage::from_pixel(2, 2, Rgb([0, 0, 255])).save(root.join("cat/sub/e.png")).unwrap();
        GrayImage::from_pixel(4, 4, Luma([102])).save(root.join("dog/c.png")).unwrap();
        RgbImage::from_pixel(2, 2, Rgb([9, 9, 9])).save(root.join(".git/x/y.png")).unwrap();
        std::fs::write(root.join("cat/.hidden.png"), b"not a png").unwrap();
        std::fs::write(root.join("dog/notes.txt"), b"a dog").unwrap();
        std::fs::write(root.join(".DS_Store"), b"\0").unwrap();
        std::fs::write(root.join("readme.txt"), b"two classes").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::TempDir;

    fn close(got: f32, want: f32) -> bool {
        (got - want).abs() < 1e-6
    }

    /// Every value of image `i` of `data` in channel `c` is `want` (up to rounding).
    fn constant(data: &ImageDataset, i: usize, c: usize, want: f32) -> bool {
        let (img, _) = data.get(i).unwrap();
        img.plane(c).iter().all(|&v| close(v, want))
    }

    #[test]
    fn classes_order_labels_resize_and_channels() {
        let tmp = TempDir::new("folder-read");
        fixture::write(tmp.path());
        assert_eq!(image_folder_classes(tmp.path()).unwrap(), ["cat", "dog"]);
        // (2, 3): a.png's own size, so it is copied untouched; the others are resized.
        let rgb = load_image_folder(tmp.path(), (2, 3), Channels::Rgb).unwrap();
        assert_eq!((rgb.len(), rgb.classes, rgb.shape()), (4, 2, (3, 2, 3)));
        assert_eq!(rgb.class_names().unwrap(), ["cat", "dog"]);
        // cat: a.png, b.png, then the sub-folder's e.png; dog: c.png.
        assert_eq!(rgb.labels(), &[0, 0, 0, 1]);
        let (a, _) = rgb.get(0).unwrap();
        for y in 0..2 {
            for x in 0..3 {
                let p = fixture::a_pixel(x as u32, y as u32);
                for (c, &v) in p.iter().enumerate() {
                    assert_eq!(a.get(c, y, x), f32::from(v) / 255.0, "{c} {y} {x}");
                }
            }
        }
        // a.png by hand: red at (x 2, y 1) is 10 * 2 + 1 = 21, blue at (x 0, y 1) is 220.
        assert_eq!((a.get(0, 1, 2), a.get(2, 1, 0)), (21.0 / 255.0, 220.0 / 255.0));
        // Constant images stay constant through the resize.
        assert!(constant(&rgb, 1, 0, 1.0) && constant(&rgb, 1, 1, 0.0) && constant(&rgb, 1, 2, 0.0));
        assert!(constant(&rgb, 2, 0, 0.0) && constant(&rgb, 2, 2, 1.0));
        assert!((0..3).all(|c| constant(&rgb, 3, c, 0.4))); // gray replicated

        let gray = load_image_folder(tmp.path(), (5, 7), Channels::Gray).unwrap();
        assert_eq!((gray.len(), gray.shape()), (4, (1, 5, 7)));
        // Pillow's convert("L"): pure red 76, pure blue 29 (of 255); the gray file read as is.
        assert!(constant(&gray, 1, 0, 76.0 / 255.0) && constant(&gray, 2, 0, 29.0 / 255.0));
        assert!(constant(&gray, 3, 0, 0.4));
    }

    #[test]
    fn bad_folders_are_errors_that_say_where() {
        let tmp = TempDir::new("folder-errors");
        let root = tmp.path();
        let msg = load_image_folder(root, (4, 4), Channels::Rgb).unwrap_err().to_string();
        assert!(msg.contains("no class sub-folders"), "{msg}");
        let msg = load_image_folder(root.join("nowhere"), (4, 4), Channels::Rgb).unwrap_err().to_string();
        assert!(msg.contains("nowhere") && msg.contains("not a directory"), "{msg}");

        fixture::write(root);
        let msg = load_image_folder(root, (0, 4), Channels::Rgb).unwrap_err().to_string();
        assert!(msg.contains("0 x 4"), "{msg}");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("empty/list.csv"), b"1,2").unwrap();
        let msg = load_image_folder(root, (4, 4), Channels::Rgb).unwrap_err().to_string();
        assert!(msg.contains("empty") && msg.contains("hold no image files"), "{msg}");
        std::fs::remove_dir_all(root.join("empty")).unwrap();

        std::fs::write(root.join("dog/broken.png"), b"\x89PNG but not really").unwrap();
        let err = load_image_folder(root, (4, 4), Channels::Rgb).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Codec { .. }), "{msg}");
        assert!(msg.contains("broken.png"), "{msg}");
    }

    #[test]
    fn splits_read_train_and_test_or_val_with_the_same_classes() {
        let tmp = TempDir::new("folder-split");
        let root = tmp.path();
        fixture::write(&root.join("train"));
        let train = load_image_folder_split(root, Split::Train, (4, 4), Channels::Rgb).unwrap();
        assert_eq!(train.labels(), &[0, 0, 0, 1]);
        let msg = load_image_folder_split(root, Split::Test, (4, 4), Channels::Rgb).unwrap_err().to_string();
        assert!(msg.contains("no test/ or val/ folder"), "{msg}");

        // val/ stands in for test/.
        std::fs::create_dir_all(root.join("val/cat")).unwrap();
        std::fs::create_dir_all(root.join("val/dog")).unwrap();
        for (class, v) in [("cat", 0), ("dog", 255)] {
            ::image::GrayImage::from_pixel(3, 3, ::image::Luma([v]))
                .save(root.join("val").join(class).join("z.jpg"))
                .unwrap();
        }
        let val = load_image_folder_split(root, Split::Test, (4, 4), Channels::Gray).unwrap();
        assert_eq!((val.labels(), val.shape()), (&[0, 1][..], (1, 4, 4)));
        assert!(constant(&val, 0, 0, 0.0) && constant(&val, 1, 0, 1.0));

        // test/ wins over val/, and a class that train/ lacks is an error for either split.
        std::fs::create_dir_all(root.join("test/bird")).unwrap();
        std::fs::create_dir_all(root.join("test/cat")).unwrap();
        for split in [Split::Test, Split::Train] {
            let err = load_image_folder_split(root, split, (4, 4), Channels::Rgb).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Invalid { .. }), "{msg}");
            assert!(msg.contains("bird"), "{msg}");
            assert!(msg.contains("cat, dog"), "{msg}"); // the training classes
        }
        let msg = load_image_folder_split(root.join("val"), Split::Train, (4, 4), Channels::Rgb).unwrap_err();
        assert!(msg.to_string().contains("no train/ folder"), "{msg}");
    }

    /// A test split with only some of the training classes keeps the training labels: `dog` is
    /// class 1 of train/ (cat, dog) and stays 1 in a test/ that holds no `cat`, rather than
    /// becoming class 0 of a one-class folder.
    #[test]
    fn test_labels_map_by_name_to_the_training_classes() {
        let tmp = TempDir::new("folder-subset");
        let root = tmp.path();
        fixture::write(&root.join("train"));
        std::fs::create_dir_all(root.join("test/dog")).unwrap();
        ::image::GrayImage::from_pixel(2, 2, ::image::Luma([255])).save(root.join("test/dog/d.png")).unwrap();
        let test = load_image_folder_split(root, Split::Test, (2, 2), Channels::Gray).unwrap();
        assert_eq!((test.labels(), test.classes), (&[1][..], 2));
        assert_eq!(test.class_names().unwrap(), ["cat", "dog"]);
        assert!(constant(&test, 0, 0, 1.0));
        // The training split is unaffected, and through load_dataset it is the same.
        let train = load_image_folder_split(root, Split::Train, (2, 2), Channels::Gray).unwrap();
        assert_eq!((train.labels(), train.classes), (&[0, 0, 0, 1][..], 2));
        let via = crate::data::load_dataset(root, Split::Test, Some((2, 2)), Some(1)).unwrap();
        assert_eq!(via, test);

        // A test class that train/ lacks is named in the error, also when it sorts first.
        std::fs::create_dir_all(root.join("test/ant")).unwrap();
        ::image::GrayImage::from_pixel(2, 2, ::image::Luma([0])).save(root.join("test/ant/a.png")).unwrap();
        let msg = load_image_folder_split(root, Split::Test, (2, 2), Channels::Gray).unwrap_err().to_string();
        assert!(msg.contains("ant") && msg.contains("cat, dog"), "{msg}");
    }
}
