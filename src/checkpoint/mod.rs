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

pub use google_vit::{google_vit_to_timm, timm_vit_to_google};
pub use layout::permute_axes;

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
    metadata: BTreeMap<String, String>,
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
                    return Err(Error::DType {
                        name,
                        dtype: format!("{other:?}"),
                        expected: "F32, F64, F16, BF16, I64 or I32".into(),
                    });
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

    /// Adds a float tensor (errors if the value count does not match the shape).
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<()> {
        let name = name.into();
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::shape(
                name,
                format!("{} values for shape {}", shape.iter().product::<usize>(), shape_str(&shape)),
                format!("{} values", data.len()),
            ));
        }
        self.floats.insert(name, Tensor { shape, data });
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
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.floats.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        if t.shape != shape {
            return Err(Error::shape(format!("checkpoint tensor `{name}`"), shape_str(shape), shape_str(&t.shape)));
        }
        Ok(self.floats.remove(name).map(|t| t.data).unwrap_or_default())
    }

    /// Removes and returns the integer tensor `name` with its shape.
    pub fn take_ints(&mut self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        self.ints.remove(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// Removes and returns the float tensor `name` whatever its shape.
    pub fn take_any(&mut self, name: &str) -> Result<Tensor> {
        self.floats.remove(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// Names of the tensors not taken yet.
    pub fn remaining(&self) -> Vec<String> {
        self.floats.keys().chain(self.ints.keys()).cloned().collect()
    }

    /// Errors with [`Error::UnexpectedTensors`] if any tensor was never taken.
    pub fn finish(self) -> Result<()> {
        let names = self.remaining();
        if names.is_empty() { Ok(()) } else { Err(Error::UnexpectedTensors { names }) }
    }
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
