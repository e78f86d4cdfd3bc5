//! Writing a state dict as PyTorch's zip checkpoint, the file `torch.save(state_dict, path)`
//! writes, so that `torch.load(path, weights_only=True)` reads it (and so does
//! [`read_pth`](super::read_pth)).
//!
//! ```text
//! archive/data.pkl      protocol 2: OrderedDict([(name, _rebuild_tensor_v2(
//!                           persistent ('storage', FloatStorage | LongStorage, key, 'cpu', numel),
//!                           0, size, contiguous strides, False, OrderedDict())), ...])
//! archive/data/<key>    each tensor's values, little-endian (f32 or i64), 64-byte aligned
//! archive/byteorder     "little"
//! archive/version       "3"
//! ```
//!
//! ```
//! use patchgraph::checkpoint::{TensorMap, read_pth};
//! let mut m = TensorMap::default();
//! m.insert("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
//! let bytes = m.to_pth_bytes().unwrap();
//! assert_eq!(read_pth(&bytes, "round trip").unwrap().map.get("w").unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
//! ```

use super::TensorMap;
use crate::error::{Error, Result};
use std::io::{Cursor, Seek, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A pickle being written (protocol 2, the opcodes [`super::pickle`] documents).
struct Pickler(Vec<u8>);

impl Pickler {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if let Ok(small) = i32::try_from(v) {
            self.0.push(b'J');
            self.0.extend(small.to_le_bytes());
        } else {
            self.0.extend([0x8a, 8]); // LONG1 of 8 bytes
            self.0.extend((v as i64).to_le_bytes());
        }
    }
    fn tuple(&mut self, items: &[usize]) {
        self.op(b'(');
        items.iter().for_each(|&i| self.int(i));
        self.op(b't');
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

impl TensorMap {
    /// The map as the bytes of `torch.save(state_dict)`: float tensors as float32, integer
    /// tensors as int64, in name order. The metadata has no place in a `.pth` and is not written.
    pub fn to_pth_bytes(&self) -> Result<Vec<u8>> {
        let err = |e: std::io::Error| Error::Format { path: ".pth being written".into(), reason: e.to_string() };
        let cursor = self.write_pth(Cursor::new(Vec::new())).map_err(err)?;
        Ok(cursor.into_inner())
    }

    /// Writes the map as a `.pth` file ([`TensorMap::to_pth_bytes`]), atomically: an error
    /// leaves no half-written file.
    pub fn save_pth(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.check_unique_names()?;
        crate::atomic_file::write_atomically_with(path.as_ref(), |file| {
            self.write_pth(std::io::BufWriter::new(file))?.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        })
    }

    fn write_pth<W: Write + Seek>(&self, writer: W) -> std::io::Result<W> {
        // (name, shape, storage class, little-endian bytes)
        let mut entries: Vec<(&str, &[usize], &str, Vec<u8>)> = Vec::new();
        for (name, t) in &self.floats {
            entries.push((name, &t.shape, "FloatStorage", t.data.iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        for (name, (shape, data)) in &self.ints {
            entries.push((name, shape, "LongStorage", data.iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut p = Pickler(vec![0x80, 2]);
        p.empty_ordered_dict();
        p.op(b'(');
        for (key, (name, shape, class, _)) in entries.iter().enumerate() {
            p.str(name);
            p.global("torch._utils", "_rebuild_tensor_v2");
            p.op(b'(');
            // the storage, as a persistent id
            p.op(b'(');
            p.str("storage");
            p.global("torch", class);
            p.str(&key.to_string());
            p.str("cpu");
            p.int(shape.iter().product());
            p.op(b't');
            p.op(b'Q');
            p.int(0);
            p.tuple(shape);
            p.tuple(&strides(shape));
            p.op(0x89); // requires_grad = False
            p.empty_ordered_dict(); // backward hooks
            p.op(b't');
            p.op(b'R');
        }
        p.op(b'u');
        p.op(b'.');
        let mut zip = ZipWriter::new(writer);
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored)?;
        zip.write_all(&p.0)?;
        zip.start_file("archive/byteorder", stored)?;
        zip.write_all(b"little")?;
        for (key, (.., bytes)) in entries.iter().enumerate() {
            let options = stored.with_alignment(64).large_file(bytes.len() as u64 >= u64::from(u32::MAX));
            zip.start_file(format!("archive/data/{key}"), options)?;
            zip.write_all(bytes)?;
        }
        zip.start_file("archive/version", stored)?;
        zip.write_all(b"3\n")?;
        Ok(zip.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_reader() {
        let mut m = TensorMap::default();
        m.insert("a.weight", vec![2, 3], (0..6).map(|v| v as f32 - 2.5).collect()).unwrap();
        m.insert("a.scalar", vec![], vec![7.0]).unwrap();
        m.insert("empty", vec![0, 4], vec![]).unwrap();
        m.insert_ints("n", vec![3], vec![-1, 1 << 40, 5]).unwrap();
        let back = super::super::read_pth(&m.to_pth_bytes().unwrap(), "t").unwrap().map;
        assert_eq!(back.floats, m.floats);
        assert_eq!(back.ints, m.ints);
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }
}
