//! PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`) read without running code: the zip
//! archives of `torch.save`, the legacy pre-1.6 format, and TorchScript archives
//! (`torch.jit.save`, OpenAI's CLIP `.pt` files).
//!
//! ```text
//! zip (torch >= 1.6)    <name>/data.pkl   the object, tensors as persistent ids
//!                       <name>/data/<key> each storage's raw bytes (little-endian unless
//!                       <name>/byteorder says big)
//! TorchScript           the same, plus <name>/code/, <name>/constants.pkl: data.pkl holds
//!                       `__torch__.*` module objects whose attributes are the parameters
//! legacy (torch < 1.6)  five pickles back to back: magic number, protocol, sys info, the
//!                       object, the storage keys; then per key: u64 element count + bytes
//! ```
//!
//! The object goes through the restricted [`pickle`](super::pickle) machine. A state dict is
//! then found in it (the object itself, or the first of `state_dict`, `model`, `teacher`,
//! `module`, `model_state_dict`, `net`, `student` that holds tensors: timm, DeiT, MAE, DINO and
//! the usual training scripts), nested dicts and TorchScript modules are flattened with dotted
//! names, and each tensor is copied out of its storage honouring offset and strides. Floats
//! (f16, bf16, f64) become f32, integers and bools i64. What the file holds beside the state
//! dict (optimizer state, epoch, arguments) is named in the notes, not read; a value built from
//! a global that is not allowed is an error naming it if the state dict holds it, and a note if
//! it lies beside it (DINO's `args`, an `argparse.Namespace`).
//!
//! ```no_run
//! use patchgraph::checkpoint::read_pth;
//! let bytes = std::fs::read("deit_tiny_distilled.pth").unwrap();
//! let pth = read_pth(&bytes, "deit_tiny_distilled.pth").unwrap();
//! println!("{:?}", pth.notes); // ["state dict under `model`", ...]
//! let cls = pth.map.get("cls_token").unwrap();
//! assert_eq!(cls.shape, vec![1, 1, 48]);
//! ```

use super::pickle::{Id, Node, Pickle, StorageDtype, unpickle, unpickle_prefix};
use super::{TensorMap, f16_to_f32};
use crate::error::{Error, Result};
use crate::limits::MAX_TENSOR_ELEMENTS;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read};
use zip::ZipArchive;

/// Keys under which training scripts nest the state dict, in the order they are tried.
pub const STATE_DICT_KEYS: &[&str] =
    &["state_dict", "model", "teacher", "module", "model_state_dict", "net", "student"];

/// Nested dicts deeper than this are refused (a hostile file could nest a million).
const MAX_DEPTH: usize = 64;

/// What [`read_pth`] found.
#[derive(Clone, Debug)]
pub struct Pth {
    /// The state dict's tensors, under their dotted names.
    pub map: TensorMap,
    /// What was chosen and what was left (one line each).
    pub notes: Vec<String>,
    /// Which of the three formats the file is.
    pub format: PthFormat,
}

/// The container formats of PyTorch checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PthFormat {
    /// `torch.save`'s zip archive (torch >= 1.6).
    Zip,
    /// `torch.jit.save`: a TorchScript module.
    TorchScript,
    /// `torch.save(..., _use_new_zipfile_serialization=False)` and torch < 1.6.
    Legacy,
}

/// The legacy format's first pickle: `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// Whether `bytes` look like a PyTorch checkpoint: a zip archive holding a `data.pkl`, or the
/// legacy format's magic number.
pub fn is_pth(bytes: &[u8]) -> bool {
    if bytes.starts_with(LEGACY_MAGIC) {
        return true;
    }
    bytes.starts_with(b"PK\x03\x04")
        && ZipArchive::new(Cursor::new(bytes)).is_ok_and(|z| z.file_names().any(|n| n.ends_with("data.pkl")))
}

/// Reads a PyTorch checkpoint's state dict; `what` names the source in errors.
pub fn read_pth(bytes: &[u8], what: &str) -> Result<Pth> {
    let format = |reason: String| Error::Format { path: what.to_string(), reason };
    if bytes.starts_with(LEGACY_MAGIC) {
        let mut storages = Legacy::read(bytes, what)?;
        let pickle = storages.pickle.take().ok_or_else(|| format("no object pickle".into()))?;
        return extract(&pickle, &mut storages, what, PthFormat::Legacy);
    }
    let mut zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format(format!("neither a zip archive (torch >= 1.6) nor the legacy format: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl: Vec<&String> = names.iter().filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).collect();
    let pkl = match pkl.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(format(if names.iter().any(|n| n.ends_with(".npy")) {
                "a NumPy .npz archive, not a PyTorch checkpoint".into()
            } else {
                "a zip archive without `<name>/data.pkl`: not a PyTorch checkpoint".into()
            }));
        }
        _ => return Err(format(format!("{} `data.pkl` entries: which one is the checkpoint?", pkl.len()))),
    };
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let torchscript =
        names.iter().any(|n| n == &format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")));
    let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 16, what) {
        Ok(b) => match b.as_slice() {
            b"little" => false,
            b"big" => true,
            other => return Err(format(format!("byteorder `{}`", String::from_utf8_lossy(other)))),
        },
        Err(_) => false,
    };
    let data = read_entry(&mut zip, &pkl, 1 << 30, what)?;
    let pickle = unpickle(&data, &format!("{what}: {pkl}"))?;
    let mut storages = ZipStorages { zip, prefix, big_endian, what: what.to_string(), cache: BTreeMap::new() };
    let kind = if torchscript { PthFormat::TorchScript } else { PthFormat::Zip };
    extract(&pickle, &mut storages, what, kind)
}

/// One zip entry's bytes, at most `limit` of them.
fn read_entry(zip: &mut ZipArchive<Cursor<&[u8]>>, name: &str, limit: u64, what: &str) -> Result<Vec<u8>> {
    let format = |reason: String| Error::Format { path: what.to_string(), reason };
    let mut entry = zip.by_name(name).map_err(|e| format(format!("entry `{name}`: {e}")))?;
    let size = entry.size();
    if size > limit {
        return Err(format(format!("entry `{name}` declares {size} bytes, beyond the limit of {limit}")));
    }
    let mut out = Vec::new();
    (&mut entry).take(size + 1).read_to_end(&mut out).map_err(|e| format(format!("entry `{name}`: {e}")))?;
    if out.len() as u64 != size {
        return Err(format(format!("entry `{name}` holds {} bytes, its header declares {size}", out.len())));
    }
    Ok(out)
}

/// Where storages' bytes come from.
trait Storages {
    /// The raw bytes of storage `key` (at least `numel` elements of `dtype`), little-endian.
    fn bytes(&mut self, key: &str, dtype: StorageDtype, numel: usize) -> Result<&[u8]>;
}

struct ZipStorages<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
    big_endian: bool,
    what: String,
    cache: BTreeMap<String, (StorageDtype, Vec<u8>)>,
}

impl Storages for ZipStorages<'_> {
    fn bytes(&mut self, key: &str, dtype: StorageDtype, numel: usize) -> Result<&[u8]> {
        let want = storage_bytes(numel, dtype, &self.what, key)?;
        if let Some((cached, raw)) = self.cache.get(key) {
            // Every reference to a storage must agree on what it is.
            if *cached != dtype || raw.len() < want {
                return Err(Error::Format {
                    path: self.what.clone(),
                    reason: format!(
                        "storage `{key}` is referenced as {dtype:?} of {numel} elements, and elsewhere as {cached:?} of {} bytes",
                        raw.len()
                    ),
                });
            }
        } else {
            // TorchScript's constants live under `constants/`; everything else under `data/`.
            let name =
                if key.contains('/') { format!("{}{key}", self.prefix) } else { format!("{}data/{key}", self.prefix) };
            let mut raw = read_entry(&mut self.zip, &name, want as u64 + (1 << 20), &self.what)?;
            if raw.len() < want {
                return Err(Error::Format {
                    path: self.what.clone(),
                    reason: format!(
                        "storage `{name}` holds {} bytes, {numel} elements of {dtype:?} need {want}",
                        raw.len()
                    ),
                });
            }
            if self.big_endian {
                raw.chunks_exact_mut(dtype.size()).for_each(<[u8]>::reverse);
            }
            self.cache.insert(key.to_string(), (dtype, raw));
        }
        Ok(&self.cache[key].1)
    }
}

/// `numel * size` bytes, checked against the element limit.
fn storage_bytes(numel: usize, dtype: StorageDtype, what: &str, key: &str) -> Result<usize> {
    if numel > MAX_TENSOR_ELEMENTS {
        return Err(Error::Format {
            path: what.to_string(),
            reason: format!("storage `{key}` declares {numel} elements, beyond the limit of {MAX_TENSOR_ELEMENTS}"),
        });
    }
    Ok(numel * dtype.size())
}

/// The legacy format, read whole.
struct Legacy {
    pickle: Option<Pickle>,
    storages: BTreeMap<String, Vec<u8>>,
    what: String,
}

impl Legacy {
    fn read(bytes: &[u8], what: &str) -> Result<Legacy> {
        let format = |reason: String| Error::Format { path: what.to_string(), reason };
        // The magic number is an 80-bit integer: compared as bytes, not read as a value.
        let mut pos = LEGACY_MAGIC.len();
        let mut next = |label: &str| -> Result<Pickle> {
            let (p, used) = unpickle_prefix(&bytes[pos..], &format!("{what}: legacy {label}"))?;
            pos += used;
            Ok(p)
        };
        let protocol = next("protocol version")?;
        if protocol.int(protocol.root) != Some(1001) {
            return Err(format("legacy protocol version is not 1001".into()));
        }
        let sys_info = next("system info")?;
        if let Node::Dict(items) = sys_info.node(sys_info.root) {
            for &(k, v) in items {
                if sys_info.str(k) == Some("little_endian") && matches!(sys_info.node(v), Node::Bool(false)) {
                    return Err(format("a big-endian legacy checkpoint".into()));
                }
            }
        }
        let object = next("object")?;
        let keys = next("storage keys")?;
        let key_list: Vec<String> = keys
            .seq(keys.root)
            .ok_or_else(|| format("the storage keys are not a list".into()))?
            .iter()
            .map(|&k| {
                keys.str(k).map(str::to_string).ok_or_else(|| format("a storage key that is not a string".into()))
            })
            .collect::<Result<_>>()?;
        // The element size of each storage comes from the object pickle's persistent ids.
        let mut dtypes = BTreeMap::new();
        for node in &object.nodes {
            if let Node::Storage { key, dtype, .. } = node {
                dtypes.insert(key.clone(), *dtype);
            }
        }
        let mut storages = BTreeMap::new();
        for key in key_list {
            let dtype = *dtypes.get(&key).ok_or_else(|| format(format!("storage `{key}` is listed but never used")))?;
            if bytes.len() - pos < 8 {
                return Err(format(format!("truncated before storage `{key}`")));
            }
            let numel = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap_or([0; 8]));
            pos += 8;
            let numel = usize::try_from(numel).map_err(|_| format(format!("storage `{key}`: {numel} elements")))?;
            let n = storage_bytes(numel, dtype, what, &key)?;
            if bytes.len() - pos < n {
                return Err(format(format!(
                    "truncated in storage `{key}`: {n} bytes wanted, {} left",
                    bytes.len() - pos
                )));
            }
            storages.insert(key, bytes[pos..pos + n].to_vec());
            pos += n;
        }
        Ok(Legacy { pickle: Some(object), storages, what: what.to_string() })
    }
}

impl Storages for Legacy {
    fn bytes(&mut self, key: &str, dtype: StorageDtype, numel: usize) -> Result<&[u8]> {
        let raw = self.storages.get(key).ok_or_else(|| Error::Format {
            path: self.what.clone(),
            reason: format!("storage `{key}` is not in the file"),
        })?;
        if raw.len() < storage_bytes(numel, dtype, &self.what, key)? {
            return Err(Error::Format {
                path: self.what.clone(),
                reason: format!("storage `{key}` holds {} bytes, {numel} elements need more", raw.len()),
            });
        }
        Ok(raw)
    }
}

/// A short name of a node's kind, for notes.
fn kind(p: &Pickle, id: Id) -> String {
    match p.node(id) {
        Node::None => "None".into(),
        Node::Bool(_) => "bool".into(),
        Node::Int(_) => "int".into(),
        Node::Float(_) => "float".into(),
        Node::Str(_) => "str".into(),
        Node::Bytes(_) => "bytes".into(),
        Node::Tuple(_) => "tuple".into(),
        Node::List(_) => "list".into(),
        Node::Dict(_) => "dict".into(),
        Node::Set(_) => "set".into(),
        Node::Global(_) => "global".into(),
        Node::Storage { .. } => "storage".into(),
        Node::Tensor { .. } => "tensor".into(),
        Node::Object { class, .. } => class.clone(),
        Node::Refused(name) => format!("{name}, a global that is not allowed: never called"),
    }
}

/// A dict's items with string keys.
fn dict_items(p: &Pickle, id: Id, what: &str, path: &str) -> Result<Vec<(String, Id)>> {
    let Node::Dict(items) = p.node(id) else { return Ok(Vec::new()) };
    items
        .iter()
        .map(|&(k, v)| {
            let key = match p.node(k) {
                Node::Str(s) => s.clone(),
                Node::Int(i) => i.to_string(),
                _ => {
                    return Err(Error::Format {
                        path: what.to_string(),
                        reason: format!("a key of `{path}` is a {}, not a string", kind(p, k)),
                    });
                }
            };
            Ok((key, v))
        })
        .collect()
}

/// Whether a dict holds a tensor (directly or in nested dicts / modules); each node is looked
/// at once (`seen`), so shared or cyclic dicts cost no more than their size.
fn holds_tensor(p: &Pickle, id: Id, depth: usize, seen: &mut BTreeSet<Id>) -> bool {
    depth < MAX_DEPTH
        && seen.insert(id)
        && match p.node(id) {
            Node::Tensor { .. } => true,
            Node::Dict(items) => items.iter().any(|&(_, v)| holds_tensor(p, v, depth + 1, seen)),
            Node::Object { state: Some(s), .. } => holds_tensor(p, *s, depth + 1, seen),
            _ => false,
        }
}

/// The first refused global inside a list, tuple or set (searched once per node).
fn refused_in(p: &Pickle, id: Id, depth: usize, seen: &mut BTreeSet<Id>) -> Option<String> {
    if depth >= MAX_DEPTH || !seen.insert(id) {
        return None;
    }
    match p.node(id) {
        Node::Refused(name) => Some(name.clone()),
        Node::Tuple(items) | Node::List(items) | Node::Set(items) => {
            items.iter().find_map(|&i| refused_in(p, i, depth + 1, seen))
        }
        Node::Dict(items) => items
            .iter()
            .find_map(|&(k, v)| refused_in(p, k, depth + 1, seen).or_else(|| refused_in(p, v, depth + 1, seen))),
        Node::Object { state: Some(s), .. } => refused_in(p, *s, depth + 1, seen),
        _ => None,
    }
}

fn extract(p: &Pickle, storages: &mut dyn Storages, what: &str, format: PthFormat) -> Result<Pth> {
    let mut notes = Vec::new();
    let root = p.root;
    let mut chosen = root;
    match p.node(root) {
        Node::Dict(_) => {
            let items = dict_items(p, root, what, "the checkpoint")?;
            let top_tensors = items.iter().any(|&(_, v)| matches!(p.node(v), Node::Tensor { .. }));
            if !top_tensors
                && let Some((key, id)) = STATE_DICT_KEYS.iter().find_map(|k| {
                    items.iter().find(|(name, v)| name == k && holds_tensor(p, *v, 0, &mut BTreeSet::new()))
                })
            {
                chosen = *id;
                notes.push(format!("state dict under `{key}`"));
                let others: Vec<String> =
                    items.iter().filter(|(k, _)| k != key).map(|(k, v)| format!("{k} ({})", kind(p, *v))).collect();
                if !others.is_empty() {
                    notes.push(format!("not read: {}", others.join(", ")));
                }
            }
        }
        Node::Object { class, .. } => notes.push(format!("TorchScript module `{class}`: its parameters and buffers")),
        Node::Refused(name) => {
            // A whole pickled nn.Module (torch.save(model)): its class is a refused global.
            return Err(Error::RefusedGlobal {
                path: what.to_string(),
                global: name.clone(),
                key: "(the file: a whole object, not a state dict; save model.state_dict())".to_string(),
            });
        }
        _ => {
            return Err(Error::Format {
                path: what.to_string(),
                reason: format!("the file holds a {}, not a state dict", kind(p, root)),
            });
        }
    }
    let mut map = TensorMap::default();
    let mut skipped = Vec::new();
    let mut visited = BTreeSet::new();
    walk(p, chosen, "", 0, storages, what, &mut map, &mut skipped, false, &mut visited)?;
    if !skipped.is_empty() {
        let n = skipped.len();
        skipped.truncate(8);
        notes.push(format!(
            "{n} non-tensor entr{} in the state dict not read: {}{}",
            if n == 1 { "y" } else { "ies" },
            skipped.join(", "),
            if n > 8 { ", ..." } else { "" }
        ));
    }
    if map.shapes().next().is_none() && map.ints.is_empty() {
        return Err(Error::Format { path: what.to_string(), reason: "no tensors in the state dict".into() });
    }
    Ok(Pth { map, notes, format })
}

#[allow(clippy::too_many_arguments)]
fn walk(
    p: &Pickle,
    id: Id,
    prefix: &str,
    depth: usize,
    storages: &mut dyn Storages,
    what: &str,
    map: &mut TensorMap,
    skipped: &mut Vec<String>,
    in_module: bool,
    visited: &mut BTreeSet<Id>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Format { path: what.to_string(), reason: format!("dicts nested deeper than {MAX_DEPTH}") });
    }
    let path = prefix.trim_end_matches('.');
    // A state dict is a tree: a dict or module reached twice (shared or cyclic) would be
    // flattened once per path, doubling per level.
    if matches!(p.node(id), Node::Dict(_) | Node::Object { .. }) && !visited.insert(id) {
        return Err(Error::Format {
            path: what.to_string(),
            reason: format!("`{path}` is a dict reached twice (shared or cyclic): not a state dict"),
        });
    }
    match p.node(id) {
        Node::Tensor { storage, offset, shape, stride } => {
            let name = path.to_string();
            if map.contains(&name) || map.ints.contains_key(&name) {
                return Err(Error::Format { path: what.to_string(), reason: format!("two tensors named `{name}`") });
            }
            let Node::Storage { key, dtype, numel } = p.node(*storage) else {
                return Err(Error::Format {
                    path: what.to_string(),
                    reason: format!("tensor `{name}` without a storage"),
                });
            };
            let raw = storages.bytes(key, *dtype, *numel)?;
            let values = gather(raw, *dtype, *numel, *offset, shape, stride).map_err(|reason| Error::Format {
                path: what.to_string(),
                reason: format!("tensor `{name}`: {reason}"),
            })?;
            match values {
                Values::Float(data) => map.insert(name, shape.clone(), data)?,
                Values::Int(data) => map.insert_ints(name, shape.clone(), data)?,
            }
        }
        Node::Dict(_) => {
            for (key, v) in dict_items(p, id, what, path)? {
                walk(p, v, &format!("{prefix}{key}."), depth + 1, storages, what, map, skipped, in_module, visited)?;
            }
        }
        // A TorchScript module's attributes: its parameters, buffers and submodules are read,
        // its flags (`training`, hooks) are not weights and go unmentioned.
        Node::Object { state: Some(s), .. } => {
            walk(p, *s, prefix, depth + 1, storages, what, map, skipped, true, visited)?
        }
        Node::Refused(name) => {
            return Err(Error::RefusedGlobal { path: what.to_string(), global: name.clone(), key: path.to_string() });
        }
        _ => {
            if let Some(global) = refused_in(p, id, depth, &mut BTreeSet::new()) {
                return Err(Error::RefusedGlobal { path: what.to_string(), global, key: path.to_string() });
            }
            if !path.is_empty() && !in_module {
                skipped.push(format!("{path} ({})", kind(p, id)));
            }
        }
    }
    Ok(())
}

enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// The elements of a strided view in row-major order: element `offset + sum_i idx_i stride_i`
/// of a storage of `numel` elements of `dtype`.
fn gather(
    raw: &[u8],
    dtype: StorageDtype,
    numel: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> std::result::Result<Values, String> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_TENSOR_ELEMENTS} elements"))?;
    if count > 0 {
        let last = shape
            .iter()
            .zip(stride)
            .try_fold(offset, |a, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| a.checked_add(x)))
            .ok_or_else(|| "offset and strides overflow".to_string())?;
        if last >= numel {
            return Err(format!(
                "shape {shape:?}, strides {stride:?} and offset {offset} reach element {last} of a storage of {numel}"
            ));
        }
    }
    // Views that read elements more than once (stride 0: `expand`) could ask for far more
    // values than the file holds; a state dict's tensors never do that much.
    if count > numel.saturating_mul(16).saturating_add(16) {
        return Err(format!("shape {shape:?} reads {count} values from a storage of {numel}"));
    }
    let size = dtype.size();
    if raw.len() < numel.saturating_mul(size) {
        return Err(format!("storage of {} bytes, {numel} elements of {size} bytes expected", raw.len()));
    }
    let at = |i: usize| &raw[i * size..(i + 1) * size];
    // Element positions in row-major order (an odometer over the index, last axis fastest).
    let mut index = vec![0usize; shape.len()];
    let mut flat = offset;
    let mut next = move || {
        let here = flat;
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            flat += stride[d];
            if index[d] < shape[d] {
                break;
            }
            flat -= stride[d] * shape[d];
            index[d] = 0;
        }
        here
    };
    let floats = |f: &dyn Fn(&[u8]) -> f32, next: &mut dyn FnMut() -> usize| {
        Values::Float((0..count).map(|_| f(at(next()))).collect())
    };
    let ints = |f: &dyn Fn(&[u8]) -> i64, next: &mut dyn FnMut() -> usize| {
        Values::Int((0..count).map(|_| f(at(next()))).collect())
    };
    Ok(match dtype {
        StorageDtype::F32 => floats(&|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), &mut next),
        StorageDtype::F64 => floats(&|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32, &mut next),
        StorageDtype::F16 => floats(&|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])), &mut next),
        StorageDtype::BF16 => floats(&|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16), &mut next),
        StorageDtype::I64 => ints(&|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])), &mut next),
        StorageDtype::I32 => ints(&|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64, &mut next),
        StorageDtype::I16 => ints(&|b| i16::from_le_bytes([b[0], b[1]]) as i64, &mut next),
        StorageDtype::I8 => ints(&|b| b[0] as i8 as i64, &mut next),
        StorageDtype::U8 | StorageDtype::Bool => ints(&|b| b[0] as i64, &mut next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_storage(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn gather_follows_offset_and_strides() {
        // base = arange(12).reshape(3, 4); base.t()[1:, :2] = rows 1..4 of the transpose, columns 0..2
        let raw = f32_storage(&(0..12).map(|v| v as f32).collect::<Vec<_>>());
        let Values::Float(v) = gather(&raw, StorageDtype::F32, 12, 1, &[3, 2], &[1, 4]).unwrap() else { panic!() };
        assert_eq!(v, vec![1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        // a 0-d tensor is one element, an empty one none
        let Values::Float(v) = gather(&raw, StorageDtype::F32, 12, 5, &[], &[]).unwrap() else { panic!() };
        assert_eq!(v, vec![5.0]);
        let Values::Float(v) = gather(&raw, StorageDtype::F32, 12, 100, &[0, 3], &[3, 1]).unwrap() else { panic!() };
        assert!(v.is_empty());
    }

    #[test]
    fn gather_refuses_views_past_the_storage() {
        let raw = f32_storage(&[0.0; 12]);
        let e = gather(&raw, StorageDtype::F32, 12, 1, &[3, 4], &[4, 1]).err().unwrap();
        assert!(e.contains("reach element 12"), "{e}");
        let e = gather(&raw, StorageDtype::F32, 12, 0, &[1 << 40, 1 << 40], &[1, 1]).err().unwrap();
        assert!(e.contains("more than"), "{e}");
    }
}
