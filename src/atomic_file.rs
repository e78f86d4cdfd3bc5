//! Whole-or-nothing file writes: every checkpoint, optimiser state, metrics file, bench record
//! and picture the library or the command writes goes through [`write_atomically`].
//!
//! ```text
//! write   DIR/.NAME.PID-K.tmp      (a name no other writer uses, in the same directory)
//! fsync   the temporary file       (its bytes are on disk before it gets the real name)
//! rename  -> DIR/NAME              (atomic on POSIX file systems: readers see old or new)
//! ```
//!
//! A process killed at any point leaves `NAME` as it was or as it is meant to be, never torn;
//! at worst a stale `.NAME.*.tmp` file stays behind. On an error the temporary file is removed.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("pg-atomic-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("metrics.json");
//! patchgraph::atomic_file::write_atomically(&path, b"[]").unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"[]");
//! assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1); // no temporary file left
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Writes `bytes` to `path` through a temporary file and a rename (see the module docs).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomically`], with `write` streaming the contents into the temporary file.
/// An error from `write` (or from the sync or the rename) leaves `path` untouched.
pub fn write_atomically_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let io_err = |source: io::Error| Error::Io { path: path.to_path_buf(), source };
    let tmp =
        temporary_path(path).ok_or_else(|| io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path")))?;
    let written = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|source| {
        // Best effort: the temporary file may not even exist.
        let _ = std::fs::remove_file(&tmp);
        io_err(source)
    })
}

/// Writes several files so that they change together as nearly as a file system allows: every
/// temporary file is written and synced first, then all are renamed in order (microseconds
/// apart). An error before the renames leaves every file untouched. For a checkpoint and its
/// optimiser state.
pub fn write_all_atomically(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut written: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let cleanup = |written: &[(PathBuf, &Path)]| written.iter().for_each(|(tmp, _)| drop(std::fs::remove_file(tmp)));
    for &(path, bytes) in files {
        let io_err = |source: io::Error| Error::Io { path: path.to_path_buf(), source };
        let Some(tmp) = temporary_path(path) else {
            cleanup(&written);
            return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path")));
        };
        let result = (|| -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        written.push((tmp, path));
        if let Err(source) = result {
            cleanup(&written);
            return Err(io_err(source));
        }
    }
    for (k, (tmp, path)) in written.iter().enumerate() {
        if let Err(source) = std::fs::rename(tmp, path) {
            cleanup(&written[k..]);
            return Err(Error::Io { path: path.to_path_buf(), source });
        }
    }
    Ok(())
}

/// `DIR/.NAME.PID-K.tmp` beside `path`: unique per process and call, hidden, same directory
/// (so the rename stays on one file system).
fn temporary_path(path: &Path) -> Option<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name()?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    Some(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pg-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A write that fails half-way (as a crash would stop it) leaves the old file whole and no
    /// temporary file; a write that succeeds replaces it.
    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let d = dir("fail");
        let path = d.join("checkpoint.safetensors");
        write_atomically(&path, b"old contents").unwrap();
        let err = write_atomically_with(&path, |f| {
            f.write_all(b"new cont")?;
            Err(io::Error::other("killed half-way"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "the temporary file is removed");
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert!(write_atomically(&d.join("no/such/dir/x"), b"x").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Two files written together: both change, or (when the second cannot be written) neither.
    #[test]
    fn files_written_together_change_together() {
        let d = dir("all");
        let (a, b) = (d.join("checkpoint.safetensors"), d.join("optimizer.safetensors"));
        write_all_atomically(&[(&a, b"a1"), (&b, b"b1")]).unwrap();
        assert_eq!((std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()), (b"a1".to_vec(), b"b1".to_vec()));
        let missing = d.join("no/such/dir/c");
        assert!(write_all_atomically(&[(&a, b"a2"), (&missing, b"c2")]).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"a1", "the first file is untouched when the second fails");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2, "no temporary file is left");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
