//! NumPy `.npz` archives in and out of a [`TensorMap`].
//!
//! An `.npz` is a zip archive of `.npy` arrays, one entry `NAME.npy` per tensor `NAME` (stored
//! by `np.savez`, deflated by `np.savez_compressed`). Each `.npy` is the magic `\x93NUMPY`, a
//! version (1.0, 2.0 or 3.0), a header length, a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, then the raw values.
//!
//! Reading: little-endian `<f4`, `<f8` and `<f2` become float tensors (`f8` rounded to f32);
//! `|u1`, `|i1`, `<i2`, `<u2`, `<i4`, `<u4`, `<i8` and `|b1` become integer tensors;
//! Fortran-ordered arrays are transposed to row-major; a 0-d array has shape `[]`.
//! Writing: float tensors as `<f4`, integer tensors as `<i8`, NPY version 1.0, stored
//! uncompressed, readable by `np.load`. The map's metadata has no place in an `.npz` and is not
//! written.
//!
//! ```
//! use patchgraph::checkpoint::TensorMap;
//! let mut map = TensorMap::default();
//! map.insert("embedding/kernel", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
//! let bytes = map.to_npz_bytes().unwrap();
//! let mut back = TensorMap::from_npz_bytes(&bytes, "in memory").unwrap();
//! assert_eq!(back.take("embedding/kernel", &[2, 3]).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! // Not a zip archive at all: a format error naming the source.
//! assert!(TensorMap::from_npz_bytes(b"\x93NUMPY", "stray.npy").is_err());
//! ```

use super::layout::permute_axes;
use super::{Tensor, TensorMap, f16_to_f32};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Seek, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy pads `magic + version + length + header` to a multiple of this.
const ALIGN: usize = 64;
/// Nesting deeper than this in a header is rejected (numpy's own headers nest 1 level).
const MAX_DEPTH: usize = 32;
const READABLE: &str = "little-endian <f4, <f8, <f2, |u1, |i1, <i2, <u2, <i4, <u4, <i8 or |b1";

impl TensorMap {
    /// Reads an `.npz` file: one tensor per `NAME.npy` entry, stored or deflated.
    ///
    /// Little-endian `<f4`, `<f8` and `<f2` become float tensors (`f8` rounded to f32); `|u1`,
    /// `|i1`, `<i2`, `<u2`, `<i4`, `<u4`, `<i8` and `|b1` become integer tensors (see
    /// [`TensorMap::take_ints`]); Fortran-ordered arrays are transposed to row-major; a 0-d array
    /// has shape `[]`. Other dtypes (big-endian, objects, structured) are [`Error::DType`]; a
    /// corrupt archive or `.npy` entry is [`Error::Format`] naming the entry.
    pub fn load_npz(path: impl AsRef<Path>) -> Result<TensorMap> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        read_npz(io::BufReader::new(file), &path.display().to_string())
    }

    /// Parses `.npz` bytes as [`TensorMap::load_npz`] reads a file; `what` names the source in
    /// errors.
    pub fn from_npz_bytes(bytes: &[u8], what: &str) -> Result<TensorMap> {
        read_npz(Cursor::new(bytes), what)
    }

    /// The map as `.npz` bytes that `np.load` reads: floats as `<f4`, integers as `<i8`, one
    /// uncompressed NPY 1.0 entry `NAME.npy` per tensor. The metadata has no place in an `.npz`
    /// and is not written.
    pub fn to_npz_bytes(&self) -> Result<Vec<u8>> {
        self.check_unique_names()?;
        let cursor = self
            .write_npz(Cursor::new(Vec::new()))
            .map_err(|e| Error::Format { path: "npz being written".into(), reason: e.to_string() })?;
        Ok(cursor.into_inner())
    }

    /// Writes the map as an `.npz` file (as [`TensorMap::to_npz_bytes`]). The archive is written
    /// to a temporary file beside `path` and renamed over it at the end, so an error leaves no
    /// half-written file behind.
    pub fn save_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        self.check_unique_names()?;
        crate::atomic_file::write_atomically_with(path.as_ref(), |file| {
            let writer = self.write_npz(BufWriter::new(file))?;
            writer.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        })
    }

    /// A float and an integer tensor of the same name would be two entries of one name (in an
    /// `.npz` or a `.pth`).
    pub(super) fn check_unique_names(&self) -> Result<()> {
        match self.ints.keys().find(|name| self.floats.contains_key(*name)) {
            Some(name) => Err(Error::invalid(
                "tensor name",
                format!("`{name}` is both a float and an integer tensor; an .npz or .pth holds one tensor per name"),
            )),
            None => Ok(()),
        }
    }

    fn write_npz<W: Write + Seek>(&self, writer: W) -> io::Result<W> {
        let mut zip = ZipWriter::new(writer);
        for (name, t) in &self.floats {
            let header = npy_header("<f4", &t.shape);
            start_entry(&mut zip, name, header.len() as u64 + 4 * t.data.len() as u64)?;
            zip.write_all(&header)?;
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            zip.write_all(&bytes)?;
        }
        for (name, (shape, data)) in &self.ints {
            let header = npy_header("<i8", shape);
            start_entry(&mut zip, name, header.len() as u64 + 8 * data.len() as u64)?;
            zip.write_all(&header)?;
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            zip.write_all(&bytes)?;
        }
        Ok(zip.finish()?)
    }
}

fn start_entry<W: Write + Seek>(zip: &mut ZipWriter<W>, name: &str, size: u64) -> io::Result<()> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(size >= u64::from(u32::MAX));
    Ok(zip.start_file(format!("{name}.npy"), options)?)
}

/// Magic, version, length and header dict of an `.npy` array, padded as numpy pads it.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // numpy leaves room for the first axis to grow to 21 digits; the same bytes as numpy's.
    if let Some(first) = shape.first() {
        dict.extend(std::iter::repeat_n(' ', 21usize.saturating_sub(first.to_string().len())));
    }
    // Version 1.0 has a 2-byte header length; 2.0 (4 bytes) only for headers too long for it.
    let (version, len_bytes) = if dict.len() + ALIGN < usize::from(u16::MAX) { (1u8, 2) } else { (2u8, 4) };
    let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', (ALIGN - unpadded % ALIGN) % ALIGN));
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([version, 0]);
    if len_bytes == 2 {
        out.extend((dict.len() as u16).to_le_bytes());
    } else {
        out.extend((dict.len() as u32).to_le_bytes());
    }
    out.extend(dict.as_bytes());
    out
}

fn read_npz<R: Read + Seek>(reader: R, what: &str) -> Result<TensorMap> {
    let format = |reason: String| Error::Format { path: what.to_string(), reason };
    let mut archive = ZipArchive::new(reader).map_err(|e| format(format!("not a readable zip (.npz) archive: {e}")))?;
    let mut map = TensorMap::default();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| format(format!("zip entry #{i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry.name().to_string();
        let Some(name) = entry_name.strip_suffix(".npy") else {
            return Err(format(format!("entry `{entry_name}` is not an .npy array (its name does not end in .npy)")));
        };
        let name = name.to_string();
        // The declared size bounds what is read (a deflate bomb stops there), and is itself
        // bounded by the largest tensor the library reads (8 bytes a value, plus the header).
        let declared = entry.size();
        let limit = (crate::limits::MAX_TENSOR_ELEMENTS as u64) * 8 + (1 << 20);
        if declared > limit {
            return Err(format(format!(
                "entry `{entry_name}` declares {declared} bytes, beyond the limit of {limit} (2^30 values of 8 bytes)"
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(declared + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format(format!("entry `{entry_name}`: cannot read it: {e}")))?;
        if bytes.len() as u64 != declared {
            return Err(format(format!(
                "entry `{entry_name}` holds {}{} bytes, its header declares {declared}",
                if bytes.len() as u64 > declared { "more than " } else { "" },
                bytes.len().min(declared as usize)
            )));
        }
        let array = parse_npy(&bytes).map_err(|e| match e {
            NpyError::Format(reason) => format(format!("entry `{entry_name}`: {reason}")),
            NpyError::DType(dtype) => {
                Error::DType { name: format!("{what}: {name}"), dtype, expected: READABLE.to_string() }
            }
        })?;
        if map.floats.contains_key(&name) || map.ints.contains_key(&name) {
            return Err(format(format!("two entries named `{entry_name}`")));
        }
        match array.values {
            Values::Float(data) => {
                map.floats.insert(name, Tensor { shape: array.shape, data });
            }
            Values::Int(data) => {
                map.ints.insert(name, (array.shape, data));
            }
        }
    }
    // The zip reader keeps one entry per name: a second entry of the same name in the central
    // directory would have been dropped without a word. Count them from the directory itself.
    let start = archive.central_directory_start();
    let mut reader = archive.into_inner();
    let names = central_directory_names(&mut reader, start)
        .map_err(|e| format(format!("cannot read the zip central directory: {e}")))?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(format(format!(
            "two entries named `{dup}` (an archive with duplicate names is ambiguous: which one is the tensor?)"
        )));
    }
    Ok(map)
}

/// The file names of the central directory's records, in order, read from `start` up to the
/// first record that is not a central file header (`PK\x01\x02`).
fn central_directory_names<R: Read + Seek>(reader: &mut R, start: u64) -> io::Result<Vec<String>> {
    reader.seek(io::SeekFrom::Start(start))?;
    let mut names = Vec::new();
    let mut fixed = [0u8; 46];
    loop {
        match reader.read_exact(&mut fixed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        if fixed[..4] != *b"PK\x01\x02" {
            break;
        }
        let le16 = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]) as usize;
        let (name_len, extra_len, comment_len) = (le16(28), le16(30), le16(32));
        let mut name = vec![0u8; name_len]; // at most 64 KiB
        reader.read_exact(&mut name)?;
        reader.seek(io::SeekFrom::Current((extra_len + comment_len) as i64))?;
        names.push(String::from_utf8_lossy(&name).into_owned());
    }
    Ok(names)
}

enum NpyError {
    Format(String),
    DType(String),
}

/// Reads one `.npy` array (the format `np.save` writes) as a float tensor; integer arrays are
/// converted to f32. `what` names the source in errors.
pub fn read_npy(bytes: &[u8], what: &str) -> Result<Tensor> {
    let array = parse_npy(bytes).map_err(|e| match e {
        NpyError::Format(reason) => Error::Format { path: what.to_string(), reason },
        NpyError::DType(dtype) => Error::DType { name: what.to_string(), dtype, expected: READABLE.to_string() },
    })?;
    let data = match array.values {
        Values::Float(data) => data,
        Values::Int(data) => data.into_iter().map(|v| v as f32).collect(),
    };
    Ok(Tensor { shape: array.shape, data })
}

/// Reads one `.npy` array as integers, exactly (no trip through f32: node ids above 2^24
/// survive): any integer or bool dtype, widened to i64. A float array is [`Error::DType`]
/// (an `edge_index` must be integral). `what` names the source in errors.
///
/// ```
/// // np.save of np.array([[0, 16777217], [1, 2]], dtype=np.int64)
/// let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }";
/// let mut npy = b"\x93NUMPY\x01\x00".to_vec();
/// let len = (10 + header.len() + 1).div_ceil(64) * 64 - 10;
/// npy.extend((len as u16).to_le_bytes());
/// npy.extend(format!("{header:<w$}\n", w = len - 1).bytes());
/// for v in [0i64, 16_777_217, 1, 2] { npy.extend(v.to_le_bytes()); }
/// let (shape, data) = patchgraph::checkpoint::read_npy_ints(&npy, "edges.npy").unwrap();
/// assert_eq!((shape, data), (vec![2, 2], vec![0, 16_777_217, 1, 2]));
/// ```
pub fn read_npy_ints(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<i64>)> {
    let integers = "an integer or bool dtype (<i8, <i4, <u4, <i2, <u2, |i1, |u1, |b1)";
    let array = parse_npy(bytes).map_err(|e| match e {
        NpyError::Format(reason) => Error::Format { path: what.to_string(), reason },
        NpyError::DType(dtype) => Error::DType { name: what.to_string(), dtype, expected: integers.to_string() },
    })?;
    match array.values {
        Values::Int(data) => Ok((array.shape, data)),
        Values::Float(_) => Err(Error::DType {
            name: what.to_string(),
            dtype: "a float dtype".to_string(),
            expected: integers.to_string(),
        }),
    }
}

enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

struct NpyArray {
    shape: Vec<usize>,
    values: Values,
}

/// The element types read, by the letter and size of numpy's `descr`.
#[derive(Clone, Copy)]
enum Kind {
    F16,
    F32,
    F64,
    Bool,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
}

impl Kind {
    fn parse(descr: &str) -> Option<Kind> {
        let (order, code) = descr.split_at_checked(1)?;
        let kind = match code {
            "f2" => Kind::F16,
            "f4" => Kind::F32,
            "f8" => Kind::F64,
            "b1" => Kind::Bool,
            "i1" => Kind::I8,
            "u1" => Kind::U8,
            "i2" => Kind::I16,
            "u2" => Kind::U16,
            "i4" => Kind::I32,
            "u4" => Kind::U32,
            "i8" => Kind::I64,
            _ => return None,
        };
        // One-byte types have no byte order ('|'); the others must be little-endian.
        let ok = match kind.size() {
            1 => matches!(order, "|" | "<" | ">" | "="),
            _ => order == "<",
        };
        ok.then_some(kind)
    }

    fn size(self) -> usize {
        match self {
            Kind::Bool | Kind::I8 | Kind::U8 => 1,
            Kind::F16 | Kind::I16 | Kind::U16 => 2,
            Kind::F32 | Kind::I32 | Kind::U32 => 4,
            Kind::F64 | Kind::I64 => 8,
        }
    }

    fn decode(self, raw: &[u8]) -> Values {
        let n = self.size();
        let floats = |f: fn(&[u8]) -> f32| Values::Float(raw.chunks_exact(n).map(f).collect());
        let ints = |f: fn(&[u8]) -> i64| Values::Int(raw.chunks_exact(n).map(f).collect());
        match self {
            Kind::F16 => floats(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            Kind::F32 => floats(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Kind::F64 => floats(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32),
            Kind::Bool => ints(|b| i64::from(b[0] != 0)),
            Kind::I8 => ints(|b| i64::from(b[0] as i8)),
            Kind::U8 => ints(|b| i64::from(b[0])),
            Kind::I16 => ints(|b| i64::from(i16::from_le_bytes([b[0], b[1]]))),
            Kind::U16 => ints(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))),
            Kind::I32 => ints(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Kind::U32 => ints(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Kind::I64 => ints(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        }
    }
}

/// Parses one `.npy` array (the bytes of one archive entry).
fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, NpyError> {
    let bad = |reason: String| NpyError::Format(reason);
    if bytes.get(..MAGIC.len()) != Some(MAGIC) {
        return Err(bad("does not start with the NPY magic \\x93NUMPY".into()));
    }
    let (major, minor) = match bytes.get(MAGIC.len()..MAGIC.len() + 2) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(bad(format!("cut off after {} bytes, inside the NPY preamble", bytes.len()))),
    };
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(bad(format!("unsupported NPY format version {major}.{minor} (1.0, 2.0 or 3.0 are read)"))),
    };
    let len_at = MAGIC.len() + 2;
    let header_len = match bytes.get(len_at..len_at + len_bytes) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err(bad(format!("cut off after {} bytes, inside the NPY preamble", bytes.len()))),
    };
    let header_at = len_at + len_bytes;
    let data_at = header_at.saturating_add(header_len);
    let Some(header) = bytes.get(header_at..data_at) else {
        return Err(bad(format!(
            "NPY header of {header_len} bytes is cut off: the entry ends {} bytes into it",
            bytes.len() - header_at
        )));
    };
    // Versions 1.0 and 2.0 encode the header in latin-1, 3.0 in UTF-8.
    let text: String = if major == 3 {
        String::from_utf8(header.to_vec()).map_err(|_| bad("NPY 3.0 header is not valid UTF-8".into()))?
    } else {
        header.iter().map(|&b| char::from(b)).collect()
    };
    let (descr, fortran_order, shape) =
        parse_header(&text).map_err(|e| bad(format!("bad NPY header {text:?}: {e}")))?;
    let descr = match descr {
        Lit::Str(s) => s,
        Lit::List(fields) => {
            let summary = header_summary(&text);
            return Err(NpyError::DType(format!("a structured dtype of {} fields ({summary})", fields.len())));
        }
        _ => return Err(bad(format!("bad NPY header {text:?}: 'descr' is not a string"))),
    };
    let kind = Kind::parse(&descr).ok_or_else(|| NpyError::DType(descr.clone()))?;
    let count = shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
    let Some(nbytes) = count.and_then(|c| c.checked_mul(kind.size())) else {
        return Err(bad(format!("shape {shape:?} has too many elements")));
    };
    let raw = bytes.get(data_at..).unwrap_or_default();
    if raw.len() != nbytes {
        let shortfall = if raw.len() < nbytes { "cut off" } else { "too long" };
        return Err(bad(format!(
            "data {shortfall}: shape {shape:?} of {descr} needs {nbytes} bytes after the header, found {}",
            raw.len()
        )));
    }
    let mut values = kind.decode(raw);
    if fortran_order && shape.len() > 1 {
        // Column-major `shape` is row-major `reversed shape`; reversing the axes makes it row-major.
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..shape.len()).rev().collect();
        let relayout = |e: Error| bad(format!("cannot reorder the Fortran-ordered data: {e}"));
        values = match values {
            Values::Float(v) => Values::Float(permute_axes(&v, &reversed, &perm).map_err(relayout)?),
            Values::Int(v) => Values::Int(permute_axes(&v, &reversed, &perm).map_err(relayout)?),
        };
    }
    Ok(NpyArray { shape, values })
}

fn header_summary(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    None,
    Int(usize),
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

/// `descr`, `fortran_order` and `shape` of a header dict; any other key is an error, as in numpy.
fn parse_header(text: &str) -> std::result::Result<(Lit, bool, Vec<usize>), String> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = LitParser { chars: &chars, at: 0 };
    let lit = p.value(0)?;
    p.skip_ws();
    if p.at != chars.len() {
        return Err(format!("unexpected {:?} after the dict", p.rest()));
    }
    let Lit::Dict(items) = lit else { return Err("not a dict".into()) };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        let slot = match &key {
            Lit::Str(k) if k == "descr" => &mut descr,
            Lit::Str(k) if k == "fortran_order" => &mut fortran,
            Lit::Str(k) if k == "shape" => &mut shape,
            other => return Err(format!("unexpected key {other:?} (only 'descr', 'fortran_order', 'shape')")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("key {key:?} appears twice"));
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err("it needs the keys 'descr', 'fortran_order' and 'shape'".into());
    };
    let Lit::Bool(fortran) = fortran else { return Err("'fortran_order' is not True or False".into()) };
    let Lit::Tuple(dims) = shape else { return Err("'shape' is not a tuple".into()) };
    let shape = dims
        .into_iter()
        .map(|d| match d {
            Lit::Int(n) => Ok(n),
            other => Err(format!("'shape' holds {other:?}, not a dimension")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

struct LitParser<'a> {
    chars: &'a [char],
    at: usize,
}

impl LitParser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn rest(&self) -> String {
        self.chars.get(self.at..).unwrap_or_default().iter().take(20).collect()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        self.skip_ws();
        match self.peek() {
            Some('{') => {
                self.at += 1;
                let mut items = Vec::new();
                while !self.close('}', items.is_empty())? {
                    let key = self.value(depth + 1)?;
                    self.skip_ws();
                    if self.peek() != Some(':') {
                        return Err(format!("expected ':' at {:?}", self.rest()));
                    }
                    self.at += 1;
                    items.push((key, self.value(depth + 1)?));
                }
                Ok(Lit::Dict(items))
            }
            Some('(') => {
                self.at += 1;
                let mut items = Vec::new();
                while !self.close(')', items.is_empty())? {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Lit::Tuple(items))
            }
            Some('[') => {
                self.at += 1;
                let mut items = Vec::new();
                while !self.close(']', items.is_empty())? {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Lit::List(items))
            }
            Some(quote @ ('\'' | '"')) => {
                self.at += 1;
                let mut s = String::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated string".into()),
                        Some(c) if c == quote => break,
                        Some('\\') => {
                            self.at += 1;
                            s.extend(self.peek());
                        }
                        Some(c) => s.push(c),
                    }
                    self.at += 1;
                }
                self.at += 1;
                Ok(Lit::Str(s))
            }
            Some(c) if c.is_ascii_digit() => {
                let mut n = 0usize;
                while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
                    n = n.checked_mul(10).and_then(|n| n.checked_add(d as usize)).ok_or("integer too large")?;
                    self.at += 1;
                }
                // Python 2 wrote long integers as `3L`; numpy still reads them.
                if self.peek() == Some('L') {
                    self.at += 1;
                }
                Ok(Lit::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.at += 1;
                }
                let word: String = self.chars.get(start..self.at).unwrap_or_default().iter().collect();
                match word.as_str() {
                    "True" => Ok(Lit::Bool(true)),
                    "False" => Ok(Lit::Bool(false)),
                    "None" => Ok(Lit::None),
                    _ => Err(format!("unknown name `{word}`")),
                }
            }
            Some(_) => Err(format!("unexpected {:?}", self.rest())),
            None => Err("ends too early".into()),
        }
    }

    /// Inside a container, before an item (the `first` one, or one after a `,`): consumes the
    /// separator and whitespace, and the closing bracket if it comes (then returns true).
    fn close(&mut self, bracket: char, first: bool) -> std::result::Result<bool, String> {
        self.skip_ws();
        if self.peek() == Some(bracket) {
            self.at += 1;
            return Ok(true);
        }
        if !first {
            if self.peek() != Some(',') {
                return Err(format!("expected ',' or {bracket:?} at {:?}", self.rest()));
            }
            self.at += 1;
            self.skip_ws();
            if self.peek() == Some(bracket) {
                self.at += 1;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz").join(name)
    }

    /// One `.npy` entry: magic, version, header length, `header` as given, `data`.
    fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([major, 0]);
        if major == 1 {
            out.extend((header.len() as u16).to_le_bytes());
        } else {
            out.extend((header.len() as u32).to_le_bytes());
        }
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn zip_of(entries: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            zip.start_file(*name, SimpleFileOptions::default().compression_method(method)).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// Two entries of one name (the zip reader keeps one of them): an error naming it, for
    /// stored and deflated archives, whichever data differ. Made by renaming `b.npy` to
    /// `a.npy` in the local and central headers (the CRCs cover the data, not the names).
    #[test]
    fn duplicate_entry_names_are_an_error() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let (x, y) = (npy(1, header, &f32s(&[1.0, 2.0])), npy(1, header, &f32s(&[3.0, 4.0])));
        for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
            let good = zip_of(&[("a.npy", &x), ("b.npy", &y)], method);
            assert_eq!(TensorMap::from_npz_bytes(&good, "good.npz").unwrap().remaining(), vec!["a", "b"]);
            let mut dup = good.clone();
            let mut renamed = 0;
            for at in 0..dup.len() - 5 {
                if &dup[at..at + 5] == b"b.npy" {
                    dup[at..at + 5].copy_from_slice(b"a.npy");
                    renamed += 1;
                }
            }
            assert_eq!(renamed, 2, "one local and one central header");
            let err = TensorMap::from_npz_bytes(&dup, "dup.npz").unwrap_err().to_string();
            assert!(err.contains("dup.npz") && err.contains("two entries named `a.npy`"), "{err}");
        }
    }

    fn one(entry: &str, npy_bytes: &[u8]) -> Result<TensorMap> {
        TensorMap::from_npz_bytes(&zip_of(&[(entry, npy_bytes)], CompressionMethod::Stored), "test.npz")
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn sample() -> TensorMap {
        let mut map = TensorMap::default();
        map.insert("a", vec![2, 3], vec![1.0, -2.5, 3.25, 4.0, 5.0, -0.0]).unwrap();
        map.insert("scalar", vec![], vec![7.5]).unwrap();
        map.insert("empty", vec![0, 3], vec![]).unwrap();
        map.insert("Transformer/encoderblock_0/LayerNorm_0/scale", vec![2], vec![f32::MAX, f32::MIN_POSITIVE]).unwrap();
        map.ints.insert("idx".into(), (vec![2, 2], vec![i64::MIN, -1, 0, i64::MAX]));
        map
    }

    #[test]
    fn round_trip() {
        let map = sample();
        let bytes = map.to_npz_bytes().unwrap();
        assert_eq!(TensorMap::from_npz_bytes(&bytes, "round trip").unwrap(), map);
    }

    #[test]
    fn header_is_numpys() {
        // The bytes `np.save` writes for a float32 (2, 3) array: 10 bytes of preamble, the dict,
        // 21 - 1 spaces of room for the first axis, then spaces and '\n' up to 128 bytes.
        let h = npy_header("<f4", &[2, 3]);
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(h.len(), 128);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00"); // 0x76 = 118 = 128 - 10
        assert_eq!(&h[10..10 + dict.len()], dict.as_bytes());
        assert!(h[10 + dict.len()..127].iter().all(|&b| b == b' '));
        assert_eq!(h[127], b'\n');
        assert!(npy_header("<i8", &[]).windows(13).any(|w| w == b"'shape': (), "));
        assert!(npy_header("<i8", &[5]).windows(14).any(|w| w == b"'shape': (5,),"));
    }

    #[test]
    fn entries_equal_numpys_bytes() {
        // `f4_c` of the fixture, written by np.savez, byte for byte.
        let bytes = std::fs::read(fixture("numpy_dtypes.npz")).unwrap();
        let mut archive = ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut numpy = Vec::new();
        archive.by_name("f4_c.npy").unwrap().read_to_end(&mut numpy).unwrap();
        let mut ours = npy_header("<f4", &[2, 3]);
        ours.extend(f32s(&[1.5, -2.0, 3.25, 4.0, 5.5, -6.75]));
        assert_eq!(ours, numpy);
    }

    #[test]
    fn fortran_order_2x3_is_transposed() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column: 1 4 2 5 3 6.
        let data: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = npy(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n", &data);
        let mut map = one("w.npy", &bytes).unwrap();
        assert_eq!(map.take("w", &[2, 3]).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn versions_2_and_3() {
        let data: Vec<u8> = [-1i32, 7, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
        let v2 = npy(2, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }   \n", &data);
        let mut map = one("ints.npy", &v2).unwrap();
        assert_eq!(map.take_ints("ints").unwrap(), (vec![3], vec![-1, 7, 300]));
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        let v3 = npy(3, header, &f32s(&[0.5, -8.0]));
        assert_eq!(one("x.npy", &v3).unwrap().take("x", &[2]).unwrap(), vec![0.5, -8.0]);
        // 3.0 headers are UTF-8: a lone 0xff byte is an error there (latin-1 "ÿ" in 1.0, where a
        // stray character after the dict is an error of its own).
        let mut bad = v3.clone();
        bad[12 + header.find(", }").unwrap() + 1] = 0xff;
        let err = one("x.npy", &bad).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn zero_d_f16_bool_u8_and_python2_longs() {
        // f16 0xc000 = -2.0, a 0-d array.
        let scalar = npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (), }\n", &0xc000u16.to_le_bytes());
        let mut map = one("s.npy", &scalar).unwrap();
        assert_eq!(map.get("s").unwrap().shape, Vec::<usize>::new());
        assert_eq!(map.take("s", &[]).unwrap(), vec![-2.0]);
        let bools = npy(1, "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }\n", &[0, 1, 2]);
        assert_eq!(one("b.npy", &bools).unwrap().take_ints("b").unwrap(), (vec![3], vec![0, 1, 1]));
        let bytes = npy(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 1L), }\n", &[255, 3]);
        assert_eq!(one("u.npy", &bytes).unwrap().take_ints("u").unwrap(), (vec![2, 1], vec![255, 3]));
    }

    #[test]
    fn numpy_fixture_values() {
        for file in ["numpy_dtypes.npz", "numpy_dtypes_compressed.npz"] {
            let mut m = TensorMap::load_npz(fixture(file)).unwrap();
            assert_eq!(m.take("f4_c", &[2, 3]).unwrap(), vec![1.5, -2.0, 3.25, 4.0, 5.5, -6.75]);
            assert_eq!(m.take("f8_fortran", &[2, 3]).unwrap(), vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
            // arange(24).reshape(2, 3, 4) in Fortran order: row-major again is 0, 1, ..., 23.
            let expected: Vec<f32> = (0..24).map(|v| v as f32).collect();
            assert_eq!(m.take("f4_fortran_3d", &[2, 3, 4]).unwrap(), expected);
            assert_eq!(m.take("f2", &[4]).unwrap(), vec![1.0, -2.0, 0.333_251_95, 65504.0]);
            assert_eq!(m.take_ints("u1").unwrap(), (vec![3], vec![0, 7, 255]));
            assert_eq!(m.take_ints("i4").unwrap(), (vec![2, 2], vec![-1, 2, 3, -2147483648]));
            assert_eq!(m.take_ints("i8").unwrap(), (vec![2], vec![-(1 << 40), 5]));
            assert_eq!(m.take_ints("b1").unwrap(), (vec![3], vec![1, 0, 1]));
            assert_eq!(m.take("scalar", &[]).unwrap(), vec![2.5]);
            assert_eq!(m.take("empty", &[0, 3]).unwrap(), Vec::<f32>::new());
            assert_eq!(m.take("Transformer/encoderblock_0/LayerNorm_0/scale", &[2]).unwrap(), vec![0.25, -0.5]);
            m.finish().unwrap();
        }
        let mut m = TensorMap::load_npz(fixture("numpy_versions.npz")).unwrap();
        for (name, k) in [("v1", 1.0), ("v2", 2.0), ("v3", 3.0)] {
            assert_eq!(m.take(name, &[3]).unwrap(), vec![k, 2.0 * k, 3.0 * k]);
        }
    }

    #[test]
    fn big_endian_and_other_dtypes_are_dtype_errors() {
        let err = TensorMap::load_npz(fixture("numpy_bigendian.npz")).unwrap_err();
        assert!(matches!(&err, Error::DType { name, dtype, .. } if name.ends_with(": be") && dtype == ">f4"), "{err}");
        assert!(err.to_string().contains("numpy_bigendian.npz"), "{err}");
        for descr in ["'>f8'", "'|O'", "'<u8'", "'<c8'", "'|f4'", "[('a', '<f4'), ('b', '<i4')]"] {
            let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}\n");
            let err = one("t.npy", &npy(1, &header, &[0; 8])).unwrap_err();
            assert!(matches!(&err, Error::DType { name, .. } if name == "test.npz: t"), "{descr}: {err}");
        }
    }

    #[test]
    fn bad_headers_are_format_errors_naming_the_entry() {
        let nested =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}1{}, }}", "(".repeat(5000), ")".repeat(5000));
        let cases = [
            "{'descr': '<f4', 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1, }",
            "{'descr': '<f4', 'fortran_order': False, 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': ('1',), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [1], }",
            "{'descr': '<f4' 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f4, 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
            "('<f4', False, (1,))",
            "",
            &nested,
        ];
        for header in cases {
            let err = one("w.npy", &npy(1, header, &[0; 4])).unwrap_err();
            assert!(matches!(&err, Error::Format { reason, .. } if reason.contains("`w.npy`")), "{header:.80}: {err}");
        }
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let mut v4 = npy(2, good, &[0; 4]);
        v4[6] = 4;
        assert!(matches!(one("w.npy", &v4), Err(Error::Format { .. })));
        assert!(matches!(one("w.npy", b"PK not numpy"), Err(Error::Format { .. })));
        // Too much data is as wrong as too little.
        assert!(matches!(one("w.npy", &npy(1, good, &[0; 5])), Err(Error::Format { .. })));
        // Entries must be .npy arrays.
        let zip = zip_of(&[("w.txt", b"hello")], CompressionMethod::Stored);
        assert!(matches!(TensorMap::from_npz_bytes(&zip, "t"), Err(Error::Format { .. })));
    }

    #[test]
    fn deflated_entries_and_directories() {
        let bytes = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", &f32s(&[1.0, 2.0, 3.0]));
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        zip.add_directory("params/", SimpleFileOptions::default()).unwrap();
        let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        zip.start_file("params/x.npy", deflated).unwrap();
        zip.write_all(&bytes).unwrap();
        let zip = zip.finish().unwrap().into_inner();
        let mut map = TensorMap::from_npz_bytes(&zip, "t").unwrap();
        assert_eq!(map.take("params/x", &[3]).unwrap(), vec![1.0, 2.0, 3.0]);
        map.finish().unwrap();
    }

    #[test]
    fn truncated_archives_are_format_errors() {
        let bytes = sample().to_npz_bytes().unwrap();
        for cut in 0..bytes.len() {
            let err = TensorMap::from_npz_bytes(&bytes[..cut], "cut").unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn truncated_entries_are_format_errors_naming_the_entry() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n";
        for major in [1, 2, 3] {
            let full = npy(major, header, &f32s(&[1.0, 2.0, 3.0, 4.0]));
            assert!(one("t.npy", &full).is_ok());
            for cut in 0..full.len() {
                let err = one("t.npy", &full[..cut]).unwrap_err();
                assert!(
                    matches!(&err, Error::Format { reason, .. } if reason.contains("`t.npy`")),
                    "v{major} cut at {cut}: {err}"
                );
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        for file in ["numpy_dtypes.npz", "numpy_dtypes_compressed.npz"] {
            let bytes = std::fs::read(fixture(file)).unwrap();
            for at in 0..bytes.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut bad = bytes.clone();
                    bad[at] ^= flip;
                    let _ = TensorMap::from_npz_bytes(&bad, file);
                }
            }
        }
    }

    #[test]
    fn save_and_load_a_file() {
        let dir = std::env::temp_dir().join(format!("patchgraph-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.npz");
        let map = sample();
        map.save_npz(&path).unwrap();
        map.save_npz(&path).unwrap(); // over an existing file
        assert_eq!(TensorMap::load_npz(&path).unwrap(), map);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from("model.npz")], "no temporary file is left");

        // Errors: a missing folder, and a folder in the way of the rename; nothing is left behind.
        let err = map.save_npz(dir.join("missing/model.npz")).unwrap_err();
        assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("missing/model.npz")), "{err}");
        std::fs::create_dir(dir.join("taken.npz")).unwrap();
        assert!(matches!(map.save_npz(dir.join("taken.npz")), Err(Error::Io { .. })));
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        files.sort();
        assert_eq!(files, vec![std::ffi::OsString::from("model.npz"), "taken.npz".into()]);
        assert!(matches!(TensorMap::load_npz(dir.join("nope.npz")), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_name_both_float_and_int_is_refused() {
        let mut map = sample();
        map.ints.insert("a".into(), (vec![1], vec![1]));
        assert!(matches!(map.to_npz_bytes(), Err(Error::Invalid { .. })));
    }
}
