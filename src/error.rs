//! The one error type of the library.
//!
//! Every loader, builder and layer returns `Result<_, Error>`: user input never panics.
//! Each variant says *what* was wrong and *where* (which tensor, which node, which file).
//!
//! ```
//! use patchgraph::{Error, Graph};
//! // An edge whose source is node 5 in a 3-node graph is a typed error, not a panic.
//! let err = Graph::from_edge_index(3, &[5], &[0]).unwrap_err();
//! assert!(matches!(err, Error::NodeOutOfRange { index: 5, num_nodes: 3, .. }));
//! ```

use std::path::PathBuf;

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in patchgraph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor or buffer has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// Which tensor or argument.
        what: String,
        /// The shape that was required, e.g. `[8 x 32]`.
        expected: String,
        /// The shape that was given.
        got: String,
    },
    /// A node index is not below the number of nodes.
    #[error("{what}: node index {index} is out of range for a graph of {num_nodes} nodes")]
    NodeOutOfRange {
        /// Where the index was found, e.g. `edge_index[0][17]`.
        what: String,
        /// The offending index.
        index: usize,
        /// The number of nodes of the graph.
        num_nodes: usize,
    },
    /// A NaN or infinity where only finite numbers are allowed.
    #[error("{what} holds a non-finite value ({value}) at flat position {position}")]
    NonFinite {
        /// Which tensor.
        what: String,
        /// Flat (row-major) position of the first bad value.
        position: usize,
        /// The value itself (NaN or ±inf).
        value: f32,
    },
    /// An argument outside its domain (zero heads, k = 0, a patch larger than the image...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: String,
        /// Why it is rejected.
        reason: String,
    },
    /// An image is empty, smaller than one patch, or not a multiple of the patch size.
    #[error("image {what}: {reason}")]
    Image {
        /// Which image (path or description).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint tensor is missing.
    #[error("checkpoint is missing tensor `{name}`")]
    MissingTensor {
        /// The expected tensor name (peer naming).
        name: String,
    },
    /// A checkpoint holds tensors that the model does not know.
    #[error("checkpoint has unexpected tensors: {names:?}")]
    UnexpectedTensors {
        /// Every name that matched no parameter.
        names: Vec<String>,
    },
    /// A checkpoint tensor has a dtype we cannot read.
    #[error("tensor `{name}` has dtype {dtype}, expected {expected}")]
    DType {
        /// The tensor.
        name: String,
        /// Its dtype as the file states it.
        dtype: String,
        /// What we can read.
        expected: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is malformed (truncated safetensors, a bad header...).
    #[error("malformed {path}: {reason}")]
    Format {
        /// The file (or a description of the buffer).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A pickled checkpoint's state dict holds an object made by a global that a weights file
    /// does not need (`os.system`, `builtins.eval`, a model class): refused, and never called.
    #[error(
        "{path}: `{key}` is made by `{global}`, a global that a weights file does not need \
         (torch.load(weights_only=True) refuses it too); nothing from the file was run"
    )]
    RefusedGlobal {
        /// The file.
        path: String,
        /// The global's dotted name, e.g. `posix.system`.
        global: String,
        /// Where in the state dict (dotted key), or `(the file)` for the pickled object itself.
        key: String,
    },
    /// A checkpoint does not fit the model: every problem found, all at once (missing and
    /// unexpected tensors, shapes expected vs found, dtypes), each naming its tensor.
    #[error("checkpoint {path} does not fit the model ({} problems):\n  {}", problems.len(), problems.join("\n  "))]
    Checkpoint {
        /// The file (or a description of the source).
        path: String,
        /// One line per problem, e.g. ``tensor `pos_embed`: expected [1, 197, 192], found [1, 50, 192]``.
        problems: Vec<String>,
    },
    /// A picture could not be drawn: the plotting backend or its font failed (see [`crate::viz`]).
    #[error("drawing {what} failed: {reason}")]
    Draw {
        /// Which picture (the output file or a description).
        what: String,
        /// The backend's message.
        reason: String,
    },
    /// The `image` crate could not decode or encode an image.
    #[error("image codec error for {path}: {source}")]
    Codec {
        /// The file.
        path: String,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape { what: what.into(), expected: expected.into(), got: got.into() }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), reason: reason.into() }
    }
}

/// Returns an error naming the first non-finite value of `data`, if any.
pub fn ensure_finite(what: &str, data: &[f32]) -> Result<()> {
    // One SIMD pass over the whole slice, then the exact position only on failure.
    if crate::kernels::simd::all_finite(data) {
        return Ok(());
    }
    let position = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(Error::NonFinite { what: what.to_string(), position, value: data[position] })
}

/// [`ensure_finite`] over a column block: the first non-finite value row-major, its `position`
/// flat within the block (`row * cols + column`). A block that is its whole buffer is one SIMD
/// pass; any other block one per row.
pub fn ensure_finite_block(what: &str, block: crate::tensor::ColumnBlock<'_>) -> Result<()> {
    if let Some(all) = block.as_contiguous() {
        return ensure_finite(what, all);
    }
    for i in 0..block.rows() {
        ensure_finite(what, block.row(i)).map_err(|e| match e {
            Error::NonFinite { what, position, value } => {
                Error::NonFinite { what, position: i * block.cols() + position, value }
            }
            other => other,
        })?;
    }
    Ok(())
}
