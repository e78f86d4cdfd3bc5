//! Named tensors in and out of safetensors files, with the peers' names (timm, PyG).
//!
//! [`TensorMap`] is what layers load from: [`TensorMap::take`] hands out a tensor by its peer
//! name after checking its shape, and [`TensorMap::finish`] fails on every tensor nobody took,
//! so a checkpoint with an unknown or misspelt key is an error, never silently ignored.
//!
//! ```
//! use patchgraph::checkpoint::TensorMap;
//! let mut map = TensorMap::default();
//! map.insert("proj.weight", vec![2, 3], vec![0.0; 6]).unwrap();
//! map.insert("typo.bias", vec![2], vec![0.0; 2]).unwrap();
//! assert!(map.take("proj.weight", &[3, 2]).is_err()); // wrong shape is an error
//! let w = map.take("proj.weight", &[2, 3]).unwrap();
//! assert_eq!(w.len(), 6);
//! assert!(map.finish().is_err()); // `typo.bias` was never used
//! ```

mod google_vit;
mod layout;
mod npz;
pub mod pickle;
mod pth;
mod pth_writer;
mod vit_layout;

pub use google_vit::{google_vit_to_timm, timm_vit_to_google};
pub use layout::permute_axes;
pub use npz::{read_npy, read_npy_ints};
pub use pth::{Pth, PthFormat, STATE_DICT_KEYS, is_pth, read_pth};
pub use vit_layout::{is_clip_vision, to_timm_vit};

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// A float tensor: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// Named tensors, as read from a checkpoint or written by a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorMap {
    floats: BTreeMap<String, Tensor>,
    ints: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
    /// Tensors whose dtype cannot be read (name -> dtype): an error only if someone takes them.
    unreadable: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    /// When collecting ([`TensorMap::collect_problems`]), every failed `take` is recorded here.
    problems: Option<Vec<String>>,
    /// Whether [`TensorMap::take`] and [`TensorMap::take_any`] hand out NaN and infinities
    /// (`--allow-nonfinite`); by default a non-finite value is an error naming its position.
    allow_nonfinite: bool,
}

/// `name` back when `shape` holds `len` values, else the shape error naming it.
fn check_value_count(name: String, shape: &[usize], len: usize) -> Result<String> {
    let want = shape.iter().product::<usize>();
    if want != len {
        return Err(Error::shape(
            name,
            format!("{want} values for shape {}", shape_str(shape)),
            format!("{len} values"),
        ));
    }
    Ok(name)
}

fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}

impl TensorMap {
    /// Reads a safetensors file: F32, F64 (rounded to f32), F16/BF16 (widened) and I64/I32 tensors.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<TensorMap> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `what` names the source in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], what: &str) -> Result<TensorMap> {
        let format = |reason: String| Error::Format { path: what.to_string(), reason };
        let st = SafeTensors::deserialize(bytes).map_err(|e| format(format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format(format!("bad header: {e}")))?;
        let mut map = TensorMap {
            metadata: meta.metadata().clone().unwrap_or_default().into_iter().collect(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let raw = view.data();
            let floats: Option<Vec<f32>> = match view.dtype() {
                Dtype::F32 => Some(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
                Dtype::F64 => Some(
                    raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32).collect(),
                ),
                Dtype::F16 => Some(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
                Dtype::BF16 => Some(
                    raw.chunks_exact(2)
                        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                        .collect(),
                ),
                Dtype::I64 | Dtype::I32 => None,
                other => {
                    map.unreadable.insert(name, format!("{other:?}"));
                    continue;
                }
            };
            match floats {
                Some(data) => {
                    map.floats.insert(name, Tensor { shape, data });
                }
                None => {
                    let ints: Vec<i64> = if view.dtype() == Dtype::I64 {
                        raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()
                    } else {
                        raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect()
                    };
                    map.ints.insert(name, (shape, ints));
                }
            }
        }
        Ok(map)
    }

    /// The float tensors as safetensors bytes (F32, little-endian; metadata kept). Integer
    /// tensors are written as I64.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let f32_bytes: Vec<(&String, &Tensor, Vec<u8>)> =
            self.floats.iter().map(|(n, t)| (n, t, t.data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let i64_bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> =
            self.ints.iter().map(|(n, (s, d))| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let bad = |e: safetensors::SafeTensorError| Error::Format {
            path: "safetensors output".into(),
            reason: e.to_string(),
        };
        let mut views = Vec::with_capacity(f32_bytes.len() + i64_bytes.len());
        for (name, t, bytes) in &f32_bytes {
            views.push((
                name.as_str(),
                safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes).map_err(bad)?,
            ));
        }
        for (name, shape, bytes) in &i64_bytes {
            views.push((
                name.as_str(),
                safetensors::tensor::TensorView::new(Dtype::I64, shape.to_vec(), bytes).map_err(bad)?,
            ));
        }
        let meta = (!self.metadata.is_empty()).then(|| self.metadata.clone().into_iter().collect());
        safetensors::serialize(views, meta).map_err(bad)
    }

    /// Writes a safetensors file, through a temporary file renamed into place (never half-written).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        crate::atomic_file::write_atomically(path, &bytes)
    }

    /// Sets a `__metadata__` entry (written by [`TensorMap::save_safetensors`]).
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Adds a float tensor (errors if the value count does not match the shape).
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<()> {
        let name = check_value_count(name.into(), &shape, data.len())?;
        self.floats.insert(name, Tensor { shape, data });
        Ok(())
    }

    /// Adds an integer tensor (int64 when saved; errors if the value count does not match the
    /// shape), e.g. a PyG `edge_index` `[2, E]`.
    pub fn insert_ints(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<i64>) -> Result<()> {
        let name = check_value_count(name.into(), &shape, data.len())?;
        self.ints.insert(name, (shape, data));
        Ok(())
    }

    /// The file's `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether a float tensor of that name is present (and not yet taken).
    pub fn contains(&self, name: &str) -> bool {
        self.floats.contains_key(name)
    }

    /// The float tensor `name`, without removing it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.floats.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// Removes and returns the values of `name`, checking that its shape is `shape`.
    ///
    /// When collecting problems ([`TensorMap::collect_problems`]), a missing, misshapen or
    /// unreadable tensor is recorded and zeros of `shape` are returned instead of an error.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.take_strict(name, shape) {
            Ok(v) => Ok(v),
            Err(e) => match &mut self.problems {
                Some(problems) => {
                    problems.push(problem_line(name, shape, &e));
                    self.floats.remove(name); // reported once, as misshapen, not again as unexpected
                    Ok(vec![0.0; shape.iter().product()])
                }
                None => Err(e),
            },
        }
    }

    fn take_strict(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(dtype) = self.unreadable.remove(name) {
            return Err(Error::DType { name: name.to_string(), dtype, expected: "F32, F64, F16 or BF16".into() });
        }
        if let Some((s, _)) = self.ints.remove(name) {
            return Err(Error::DType {
                name: name.to_string(),
                dtype: format!("an integer type (shape {})", shape_str(&s)),
                expected: "F32, F64, F16 or BF16".into(),
            });
        }
        let t = self.floats.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        if t.shape != shape {
            return Err(Error::shape(format!("checkpoint tensor `{name}`"), shape_str(shape), shape_str(&t.shape)));
        }
        self.check_finite(name, t)?;
        Ok(self.floats.remove(name).map(|t| t.data).unwrap_or_default())
    }

    /// Unless non-finite values are allowed, an [`Error::NonFinite`] naming `name`, the first
    /// bad value's index in `t`'s shape and its flat position.
    fn check_finite(&self, name: &str, t: &Tensor) -> Result<()> {
        if self.allow_nonfinite {
            return Ok(());
        }
        crate::error::ensure_finite("", &t.data).map_err(|e| match e {
            Error::NonFinite { position, value, .. } => Error::NonFinite {
                what: format!(
                    "checkpoint tensor `{name}` {} at index {:?} (load with --allow-nonfinite to accept it)",
                    shape_str(&t.shape),
                    unravel(position, &t.shape)
                ),
                position,
                value,
            },
            other => other,
        })
    }

    /// Whether NaN and infinities are handed out by [`TensorMap::take`] and
    /// [`TensorMap::take_any`] (`true`) or reported as [`Error::NonFinite`] (`false`, the
    /// default): the library side of the command line's `--allow-nonfinite`.
    pub fn set_allow_nonfinite(&mut self, allow: bool) {
        self.allow_nonfinite = allow;
    }

    /// See [`TensorMap::set_allow_nonfinite`].
    pub fn allows_nonfinite(&self) -> bool {
        self.allow_nonfinite
    }

    /// The first non-finite value of any float tensor (in name order), as the error that
    /// [`TensorMap::take`] would give for it; `Ok` when every value is finite or non-finite
    /// values are allowed. For checking a whole file before writing it elsewhere.
    pub fn ensure_finite(&self) -> Result<()> {
        self.floats.iter().try_for_each(|(name, t)| self.check_finite(name, t))
    }

    /// From now on, [`TensorMap::take`] records problems instead of failing, so that a model
    /// can be loaded in one pass and [`TensorMap::finish_collected`] reports everything at once.
    pub fn collect_problems(&mut self) {
        self.problems.get_or_insert_with(Vec::new);
    }

    /// Ends a collecting load: `Ok` if every take succeeded and every tensor was taken, else one
    /// [`Error::Checkpoint`] listing each problem (missing, shape, dtype, unexpected) by name.
    pub fn finish_collected(mut self, what: &str) -> Result<()> {
        let mut problems = self.problems.take().unwrap_or_default();
        for (name, dtype) in &self.unreadable {
            problems.push(format!("unexpected tensor `{name}` (dtype {dtype}, unreadable)"));
        }
        for name in self.floats.keys().chain(self.ints.keys()) {
            problems.push(format!("unexpected tensor `{name}` (the model has no parameter of that name)"));
        }
        if problems.is_empty() { Ok(()) } else { Err(Error::Checkpoint { path: what.to_string(), problems }) }
    }

    /// Removes and returns the integer tensor `name` with its shape.
    pub fn take_ints(&mut self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        self.ints.remove(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// Removes and returns the float tensor `name` whatever its shape (non-finite values are
    /// an error unless allowed, as for [`TensorMap::take`]).
    pub fn take_any(&mut self, name: &str) -> Result<Tensor> {
        let t = self.floats.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        self.check_finite(name, t)?;
        self.floats.remove(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// Names of the tensors not taken yet.
    pub fn remaining(&self) -> Vec<String> {
        self.floats.keys().chain(self.ints.keys()).chain(self.unreadable.keys()).cloned().collect()
    }

    /// The float tensors' names and shapes (not yet taken), in name order.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.floats.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice()))
    }

    /// Removes the float tensor `name` if present.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.floats.remove(name)
    }

    /// Errors with [`Error::UnexpectedTensors`] if any tensor was never taken.
    pub fn finish(self) -> Result<()> {
        let names = self.remaining();
        if names.is_empty() { Ok(()) } else { Err(Error::UnexpectedTensors { names }) }
    }
}

/// One line of an [`Error::Checkpoint`] for a failed take of `name` with `shape`.
fn problem_line(name: &str, shape: &[usize], e: &Error) -> String {
    match e {
        Error::MissingTensor { .. } => format!("missing tensor `{name}` (expected shape {})", shape_str(shape)),
        Error::Shape { got, .. } => format!("tensor `{name}`: expected shape {}, found {got}", shape_str(shape)),
        Error::DType { dtype, .. } => format!("tensor `{name}`: dtype {dtype}, expected a float type"),
        Error::NonFinite { what, value, .. } => format!("{what}: non-finite value {value}"),
        other => format!("tensor `{name}`: {other}"),
    }
}

/// The index in `shape` of flat (row-major) position `flat`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[i] = flat % d;
            flat /= d;
        }
    }
    index
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: value = f * 2^-24
            return f32::from_bits(sign) + (if sign != 0 { -1.0 } else { 1.0 }) * f as f32 * 2f32.powi(-24);
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        // 0x3c00 = 1.0, 0xc000 = -2.0, 0x3555 ~= 0.33325, 0x0001 = 2^-24 (smallest subnormal)
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    /// A collecting load reports a missing tensor, a wrong shape, an integer tensor where a
    /// float is expected and an unknown tensor together, each by name.
    #[test]
    fn collected_problems_are_reported_together() {
        let mut map = TensorMap::default();
        map.insert("a.weight", vec![2, 3], vec![0.0; 6]).unwrap();
        map.insert("b.weight", vec![4], vec![1.0; 4]).unwrap();
        map.insert("extra", vec![1], vec![0.0]).unwrap();
        map.ints.insert("c.index".into(), (vec![2], vec![1, 2]));
        map.collect_problems();
        assert_eq!(map.take("a.weight", &[2, 3]).unwrap().len(), 6);
        assert_eq!(map.take("b.weight", &[5]).unwrap(), vec![0.0; 5]); // recorded, zeros
        assert_eq!(map.take("missing", &[2]).unwrap(), vec![0.0; 2]);
        assert_eq!(map.take("c.index", &[2]).unwrap(), vec![0.0; 2]);
        let Err(Error::Checkpoint { path, problems }) = map.finish_collected("test.safetensors") else {
            panic!("expected Error::Checkpoint");
        };
        assert_eq!(path, "test.safetensors");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("`b.weight`") && problems[0].contains("[5]") && problems[0].contains("[4]"));
        assert!(problems[1].contains("missing tensor `missing`"));
        assert!(problems[2].contains("`c.index`") && problems[2].contains("integer"));
        assert!(problems[3].contains("unexpected tensor `extra`"));
    }

    #[test]
    fn safetensors_round_trip() {
        let mut map = TensorMap::default();
        map.insert("w", vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, -7.25]).unwrap();
        map.insert("b", vec![3], vec![0.5, 0.25, -0.125]).unwrap();
        map.ints.insert("idx".into(), (vec![2], vec![-1, 7]));
        map.set_metadata("format", "pt");
        let dir = std::env::temp_dir().join(format!("pg-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        map.save_safetensors(&path).unwrap();
        let back = TensorMap::load_safetensors(&path).unwrap();
        assert_eq!(back, map);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        assert!(map.save_safetensors(dir.join("no/such/dir/m.safetensors")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_file_is_a_format_error() {
        let mut map = TensorMap::default();
        map.insert("a", vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let views = vec![("a", safetensors::tensor::TensorView::new(Dtype::F32, vec![4], &[0u8; 16]).unwrap())];
        let bytes = safetensors::serialize(views, None).unwrap();
        assert!(TensorMap::from_safetensors_bytes(&bytes, "ok").is_ok());
        for cut in [0, 4, 8, bytes.len() / 2, bytes.len() - 1] {
            let err = TensorMap::from_safetensors_bytes(&bytes[..cut], "cut").unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "cut at {cut}: {err}");
        }
    }
}
