//! The IDX file format (MNIST's): a big-endian header — two zero bytes, a type code, the number
//! of dimensions, one u32 per dimension — then the values, row-major. Raw or gzipped (detected
//! by the gzip magic bytes).
//!
//! ```
//! use patchgraph::data::read_idx_bytes;
//! let bytes = [0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]; // u8 [2 x 3]
//! let a = read_idx_bytes(&bytes, "example").unwrap();
//! assert_eq!((a.dims, a.data), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
//! assert!(read_idx_bytes(&bytes[..17], "cut").is_err());
//! ```

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes (type code `0x08`, the one MNIST and Fashion-MNIST use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file, raw or gzipped.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    read_idx_bytes(&bytes, &path.display().to_string())
}

/// Parses IDX bytes (gunzipping them first if they start with the gzip magic); `what` names the
/// source in errors.
pub fn read_idx_bytes(bytes: &[u8], what: &str) -> Result<IdxArray> {
    let bad = |reason: String| Error::Format { path: what.to_string(), reason };
    let unzipped;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| bad(format!("bad gzip data: {e}")))?;
        unzipped = out;
        &unzipped[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes: too short for the 4-byte IDX magic", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("magic {:02x?} does not start with two zero bytes: not an IDX file", &bytes[..4])));
    }
    if bytes[2] != 0x08 {
        return Err(Error::DType {
            name: what.to_string(),
            dtype: format!("IDX type code 0x{:02x}", bytes[2]),
            expected: "0x08 (unsigned byte)".into(),
        });
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!("{} bytes: too short for a header of {ndim} dimensions", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} values, the file holds {} ({})",
            body.len(),
            if body.len() < count { "truncated" } else { "trailing bytes" }
        )));
    }
    Ok(IdxArray { dims, data: body.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_files_are_format_errors() {
        let good = [0u8, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9];
        assert_eq!(read_idx_bytes(&good, "ok").unwrap().data, vec![7, 8, 9]);
        for cut in 0..good.len() {
            assert!(read_idx_bytes(&good[..cut], "cut").is_err(), "cut at {cut}");
        }
        let mut long = good.to_vec();
        long.push(1);
        assert!(read_idx_bytes(&long, "long").unwrap_err().to_string().contains("trailing"));
        let mut magic = good;
        magic[0] = 1;
        assert!(read_idx_bytes(&magic, "magic").unwrap_err().to_string().contains("not an IDX file"));
        let mut float = good;
        float[2] = 0x0d;
        assert!(matches!(read_idx_bytes(&float, "float"), Err(Error::DType { .. })));
        assert!(read_idx_bytes(&[0x1f, 0x8b, 8, 0, 1, 2], "gz").unwrap_err().to_string().contains("gzip"));
    }
}
