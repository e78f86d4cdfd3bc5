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
use crate::limits;
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
///
/// Sizes come from the header and are checked before anything of that size is allocated: the
/// element count (the product of the dimensions) must not overflow and must be within
/// [`limits::check_elements`], and it must equal the number of bytes after the header. A
/// gzipped file is decompressed header first, then no further than one byte past what the
/// header implies, so a small file that inflates to gigabytes (a gzip bomb) costs at most the
/// size its header states.
pub fn read_idx_bytes(bytes: &[u8], what: &str) -> Result<IdxArray> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_idx_gzip(bytes, what)
    } else {
        let (dims, header) = parse_header(bytes, what)?;
        let count = check_count(&dims, what)?;
        check_body(&dims, count, bytes.len() - header, what)?;
        Ok(IdxArray { dims, data: bytes[header..].to_vec() })
    }
}

/// A `Format` error naming `what`.
fn bad(what: &str, reason: String) -> Error {
    Error::Format { path: what.to_string(), reason }
}

/// The dimensions and the header length of `bytes` (raw IDX, at least the whole header).
fn parse_header(bytes: &[u8], what: &str) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 4 {
        return Err(bad(what, format!("{} bytes: too short for the 4-byte IDX magic", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            what,
            format!("magic {:02x?} does not start with two zero bytes: not an IDX file", &bytes[..4]),
        ));
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
        return Err(bad(what, format!("{} bytes: too short for a header of {ndim} dimensions", bytes.len())));
    }
    let dims =
        bytes[4..header].chunks_exact(4).map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
    Ok((dims, header))
}

/// The element count the dimensions imply, within the tensor limit (no overflow).
fn check_count(dims: &[usize], what: &str) -> Result<usize> {
    limits::check_elements(&format!("IDX {what} dimensions"), dims)
}

/// Errors unless the body holds exactly `count` values.
fn check_body(dims: &[usize], count: usize, body: usize, what: &str) -> Result<()> {
    if body != count {
        return Err(bad(
            what,
            format!(
                "dimensions {dims:?} need {count} values, the file holds {body} ({})",
                if body < count { "truncated" } else { "trailing bytes" }
            ),
        ));
    }
    Ok(())
}

/// Gzipped IDX: the header is inflated and checked first, then at most `count + 1` body bytes
/// (one more than needed, to tell trailing bytes from an exact fit).
fn read_idx_gzip(bytes: &[u8], what: &str) -> Result<IdxArray> {
    let gz_err = |e: std::io::Error| bad(what, format!("bad gzip data: {e}"));
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    // The 4-byte magic, then the 4-byte dimensions it announces (at most 255 of them).
    let mut header = Vec::with_capacity(4 + 4 * 255);
    (&mut decoder).take(4).read_to_end(&mut header).map_err(gz_err)?;
    if header.len() == 4 {
        let ndim = header[3] as u64;
        (&mut decoder).take(4 * ndim).read_to_end(&mut header).map_err(gz_err)?;
    }
    let (dims, _) = parse_header(&header, what)?;
    let count = check_count(&dims, what)?;
    // Grows with the bytes actually inflated, never beyond `count + 1`.
    let mut data = Vec::new();
    decoder.take(count as u64 + 1).read_to_end(&mut data).map_err(gz_err)?;
    check_body(&dims, count, data.len(), what)?;
    Ok(IdxArray { dims, data })
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

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Huge or overflowing dimensions are refused by the element limit, before any
    /// allocation, naming the source; raw and gzipped alike.
    #[test]
    fn header_sizes_are_checked_against_the_limits() {
        // 0xFFFFFFFF^3 overflows u64; 2^30 x 2 fits in usize but is past the 2^30 limit.
        let overflow = [0u8, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1];
        let huge = [0u8, 0, 8, 2, 0x40, 0, 0, 0, 0, 0, 0, 2, 1, 2];
        for bytes in [&overflow[..], &huge[..]] {
            for (data, name) in [(bytes.to_vec(), "raw.idx"), (gzip(bytes), "packed.idx.gz")] {
                let err = read_idx_bytes(&data, name).unwrap_err();
                let msg = err.to_string();
                assert!(matches!(err, Error::Invalid { .. }), "{msg}");
                assert!(msg.contains(name) && msg.contains("limit"), "{msg}");
            }
        }
        // A gzipped file that is cut inside its header.
        let cut = gzip(&[0, 0, 8, 2, 0, 0]);
        assert!(read_idx_bytes(&cut, "cut.gz").unwrap_err().to_string().contains("too short"));
        let ok = gzip(&[0, 0, 8, 1, 0, 0, 0, 2, 5, 6]);
        assert_eq!(read_idx_bytes(&ok, "ok.gz").unwrap(), IdxArray { dims: vec![2], data: vec![5, 6] });
    }

    /// A gzipped file is inflated no further than one byte past what its header announces: the
    /// stream below announces 3 values, then holds 4 MiB more and is cut (its end would be a gzip
    /// error). Read to the end, as before, that is a gzip error after inflating all 4 MiB; read as
    /// the header says, it is a trailing-bytes error after 4 bytes.
    #[test]
    fn gzip_is_inflated_only_as_far_as_the_header_says() {
        let mut raw = vec![0u8, 0, 8, 1, 0, 0, 0, 3];
        raw.extend((0..4 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        let packed = gzip(&raw);
        let cut = &packed[..packed.len() / 2];
        let msg = read_idx_bytes(cut, "bomb.gz").unwrap_err().to_string();
        assert!(msg.contains("trailing bytes") && !msg.contains("gzip"), "{msg}");
    }
}
