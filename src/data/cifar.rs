//! CIFAR-10, binary version (`cifar-10-batches-bin`): `data_batch_1.bin` .. `data_batch_5.bin`
//! (training, 10,000 images each) and `test_batch.bin`, every file a plain run of 3073-byte
//! records: one label byte (0..9), then 3072 pixel bytes, the red plane, the green plane and the
//! blue plane of a 32 x 32 image, each row-major. That is already `[C x H x W]`: pixels are the
//! bytes scaled by 1/255. Class names come from `batches.meta.txt` (one a line) where it exists.
//!
//! ```
//! use patchgraph::data::{CIFAR10_RECORD_BYTES, Split, load_cifar10};
//! let dir = std::env::temp_dir().join(format!("pg-cifar-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! // One test image of class 3: red 255 at row 0, column 1; everything else 0.
//! let mut record = vec![0u8; CIFAR10_RECORD_BYTES];
//! record[0] = 3;
//! record[1 + 1] = 255;
//! std::fs::write(dir.join("test_batch.bin"), &record).unwrap();
//! let test = load_cifar10(&dir, Split::Test).unwrap();
//! let (image, label) = test.get(0).unwrap();
//! assert_eq!((test.len(), test.classes, image.shape(), label), (1, 10, (3, 32, 32), 3));
//! assert_eq!((image.get(0, 0, 1), image.get(0, 0, 0), image.get(1, 0, 1)), (1.0, 0.0, 0.0));
//! // No training batches here: an error naming the five missing files.
//! assert!(load_cifar10(&dir, Split::Train).unwrap_err().to_string().contains("data_batch_1.bin"));
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use super::{ImageDataset, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Classes of CIFAR-10.
const CLASSES: usize = 10;
/// Image side.
const SIDE: usize = 32;
/// Pixel bytes of one image: 3 planes of 32 x 32.
const PIXELS: usize = 3 * SIDE * SIDE;
/// Bytes of one record in a CIFAR-10 binary batch: 1 label byte and 3072 pixel bytes.
pub const CIFAR10_RECORD_BYTES: usize = 1 + PIXELS;

/// The folder holding the batch files: `dir/cifar-10-batches-bin` if that is a folder (the
/// archive's top level), else `dir` itself.
pub(super) fn resolve_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("cifar-10-batches-bin");
    if nested.is_dir() { nested } else { dir.to_path_buf() }
}

/// Loads a split of CIFAR-10 (binary version) from `dir`, which is the `cifar-10-batches-bin`
/// folder itself or a folder containing it: training = `data_batch_1.bin` .. `data_batch_5.bin`
/// in that order, test = `test_batch.bin`. Images `[3 x 32 x 32]`, bytes scaled by 1/255;
/// `classes` is 10; class names from `batches.meta.txt` if present (ten non-blank lines).
///
/// Errors: [`Error::Invalid`] naming every missing batch file; [`Error::Io`] for a file that
/// cannot be read; [`Error::Format`] naming the file for a length that is not a positive
/// multiple of [`CIFAR10_RECORD_BYTES`], a label of 10 or more (with the record index), or a
/// `batches.meta.txt` that is not UTF-8 or does not hold ten names.
pub fn load_cifar10(dir: impl AsRef<Path>, split: Split) -> Result<ImageDataset> {
    let dir = resolve_dir(dir.as_ref());
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|k| format!("data_batch_{k}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    };
    let missing: Vec<&str> = names.iter().filter(|n| !dir.join(n).is_file()).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            "CIFAR-10 directory",
            format!(
                "{} lacks {} (the binary version: data_batch_1.bin .. data_batch_5.bin, test_batch.bin)",
                dir.display(),
                missing.join(", ")
            ),
        ));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        append_batch(&bytes, &path.display().to_string(), &mut pixels, &mut labels)?;
    }
    let data = ImageDataset::new(pixels, labels, (3, SIDE, SIDE), CLASSES)?;
    match read_class_names(&dir.join("batches.meta.txt"))? {
        Some(names) => data.with_class_names(names),
        None => Ok(data),
    }
}

/// Checks one batch file's bytes and appends its images (scaled to `[0, 1]`) and labels; `what`
/// names the file in errors.
fn append_batch(bytes: &[u8], what: &str, pixels: &mut Vec<f32>, labels: &mut Vec<usize>) -> Result<()> {
    let bad = |reason: String| Error::Format { path: what.to_string(), reason };
    if bytes.is_empty() || bytes.len() % CIFAR10_RECORD_BYTES != 0 {
        return Err(bad(format!(
            "{} bytes is not a positive multiple of the {CIFAR10_RECORD_BYTES}-byte record (1 label byte + 3 x 32 x 32 \
             pixel bytes){}",
            bytes.len(),
            if bytes.is_empty() { "" } else { ": truncated or not a CIFAR-10 binary batch" }
        )));
    }
    let records = bytes.chunks_exact(CIFAR10_RECORD_BYTES);
    if let Some((i, r)) = records.clone().enumerate().find(|(_, r)| usize::from(r[0]) >= CLASSES) {
        return Err(bad(format!("record {i} has label {}; CIFAR-10 labels are 0 to {}", r[0], CLASSES - 1)));
    }
    pixels.reserve(records.len() * PIXELS);
    labels.reserve(records.len());
    for r in records {
        labels.push(usize::from(r[0]));
        pixels.extend(r[1..].iter().map(|&p| f32::from(p) / 255.0));
    }
    Ok(())
}

/// The class names of `batches.meta.txt` (non-blank lines, trimmed), `None` if there is no
/// such file.
fn read_class_names(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| Error::Format { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != CLASSES {
        return Err(bad(format!("{} class names, expected {CLASSES} (one a line)", names.len())));
    }
    Ok(Some(names))
}

/// Writers of synthetic CIFAR-10 batches, for this module's and [`super::load_dataset`]'s tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::CIFAR10_RECORD_BYTES;
    use std::path::Path;

    /// The pixel byte the fixture stores for image `image` (counted over the whole split) at
    /// channel `c`, row `y`, column `x`. Not distinct for every position (it wraps at 256), so
    /// the tests also check a few bytes set one by one.
    pub(crate) fn byte(image: usize, c: usize, y: usize, x: usize) -> u8 {
        ((image * 37 + c * 101 + y * 7 + x * 3) % 256) as u8
    }

    /// A batch of `labels.len()` records, the first image numbered `first`.
    pub(crate) fn batch(first: usize, labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(labels.len() * CIFAR10_RECORD_BYTES);
        for (k, &label) in labels.iter().enumerate() {
            out.push(label);
            // The documented layout, spelled out: R plane, G plane, B plane, each row-major.
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        out.push(byte(first + k, c, y, x));
                    }
                }
            }
        }
        out
    }

    /// Training labels per batch file (1 to 5) and the test labels the fixture writes.
    pub(crate) const TRAIN_LABELS: [&[u8]; 5] = [&[6, 9], &[9], &[4, 1, 1], &[2], &[7, 8]];
    /// The test labels.
    pub(crate) const TEST_LABELS: &[u8] = &[3, 8, 0];

    /// Writes the five training batches and the test batch into `dir`.
    pub(crate) fn write(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut first = 0;
        for (k, labels) in TRAIN_LABELS.iter().enumerate() {
            std::fs::write(dir.join(format!("data_batch_{}.bin", k + 1)), batch(first, labels)).unwrap();
            first += labels.len();
        }
        std::fs::write(dir.join("test_batch.bin"), batch(0, TEST_LABELS)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{TEST_LABELS, batch, byte, write};
    use super::*;
    use crate::data::testdir::TempDir;

    const NAMES: &str = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";

    #[test]
    fn pixels_labels_and_splits() {
        let tmp = TempDir::new("cifar-read");
        let dir = tmp.path().join("cifar-10-batches-bin");
        write(&dir);
        // Read through the parent folder; no batches.meta.txt, so no names.
        let train = load_cifar10(tmp.path(), Split::Train).unwrap();
        let test = load_cifar10(&dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (9, 3));
        assert_eq!((train.shape(), train.classes, train.class_names()), ((3, 32, 32), 10, None));
        assert_eq!(train.labels(), &[6, 9, 9, 4, 1, 1, 2, 7, 8]);
        assert_eq!(test.labels(), &[3, 8, 0]);
        for (data, n) in [(&train, 9), (&test, 3)] {
            for i in 0..n {
                let (img, _) = data.get(i).unwrap();
                for c in 0..3 {
                    for y in 0..32 {
                        for x in 0..32 {
                            assert_eq!(img.get(c, y, x), f32::from(byte(i, c, y, x)) / 255.0, "{i} {c} {y} {x}");
                        }
                    }
                }
            }
        }
        // Single bytes set by offset: record 1 of the test batch starts at 3073; its pixel byte
        // 1 + 2 * 1024 + 5 * 32 + 7 is blue, row 5, column 7, and byte 1 + 1024 + 31 * 32 + 31 is
        // green, row 31, column 31.
        let mut bytes = batch(0, TEST_LABELS);
        bytes[3073 + 1 + 2 * 1024 + 5 * 32 + 7] = 255;
        bytes[3073 + 1 + 1024 + 31 * 32 + 31] = 51;
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        std::fs::write(dir.join("batches.meta.txt"), NAMES).unwrap();
        let test = load_cifar10(tmp.path(), Split::Test).unwrap();
        let (img, label) = test.get(1).unwrap();
        assert_eq!((img.get(2, 5, 7), img.get(1, 31, 31), label), (1.0, 0.2, 8));
        assert_eq!(test.class_names().unwrap()[8], "ship");
        assert_eq!(test.class_names().unwrap().len(), 10);
        // Unchanged neighbours: same row of the red plane and the next column of the blue one.
        assert_eq!(img.get(0, 5, 7), f32::from(byte(1, 0, 5, 7)) / 255.0);
        assert_eq!(img.get(2, 5, 8), f32::from(byte(1, 2, 5, 8)) / 255.0);
    }

    #[test]
    fn corrupt_and_missing_files_are_errors_that_say_where() {
        let tmp = TempDir::new("cifar-errors");
        let dir = tmp.path();
        write(dir);
        // Truncated: data_batch_3.bin holds 3 records; cut 5 bytes.
        let path3 = dir.join("data_batch_3.bin");
        let full = std::fs::read(&path3).unwrap();
        std::fs::write(&path3, &full[..3 * 3073 - 5]).unwrap();
        let err = load_cifar10(dir, Split::Train).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{msg}");
        assert!(msg.contains("data_batch_3.bin") && msg.contains("9214 bytes") && msg.contains("3073"), "{msg}");
        // The test split does not read that file.
        assert!(load_cifar10(dir, Split::Test).is_ok());
        std::fs::write(&path3, b"").unwrap();
        let msg = load_cifar10(dir, Split::Train).unwrap_err().to_string();
        assert!(msg.contains("data_batch_3.bin") && msg.contains("0 bytes"), "{msg}");
        std::fs::write(&path3, &full).unwrap();

        // Label 10 in record 2 of the test batch (byte offset 2 * 3073).
        let mut bytes = batch(0, TEST_LABELS);
        bytes[2 * 3073] = 10;
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        let msg = load_cifar10(dir, Split::Test).unwrap_err().to_string();
        assert!(msg.contains("test_batch.bin") && msg.contains("record 2") && msg.contains("label 10"), "{msg}");

        // Missing files: each one named.
        std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        std::fs::remove_file(dir.join("data_batch_5.bin")).unwrap();
        let err = load_cifar10(dir, Split::Train).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Invalid { .. }), "{msg}");
        assert!(msg.contains("data_batch_4.bin, data_batch_5.bin"), "{msg}");
        assert!(!msg.contains("data_batch_3.bin,"), "{msg}");
        std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
        let msg = load_cifar10(dir, Split::Test).unwrap_err().to_string();
        assert!(msg.contains("lacks test_batch.bin"), "{msg}");

        // A class-name file with the wrong number of names.
        write(dir);
        std::fs::write(dir.join("batches.meta.txt"), "cat\ndog\n").unwrap();
        let msg = load_cifar10(dir, Split::Test).unwrap_err().to_string();
        assert!(msg.contains("batches.meta.txt") && msg.contains("2 class names, expected 10"), "{msg}");
    }
}
