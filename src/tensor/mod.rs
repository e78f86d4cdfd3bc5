//! `Matrix`: the row-major `[rows x cols]` f32 buffer that every layer reads and writes.
//!
//! Node features are one row per node, one node's vector contiguous (see `notes/architecture.md`).
//! A `Matrix` views as a faer matrix for GEMM without copying.
//!
//! ```
//! use patchgraph::Matrix;
//! let m = Matrix::from_vec(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
//! assert_eq!(m.row(1), &[4., 5., 6.]);
//! assert_eq!(m.as_faer()[(0, 2)], 3.0);
//! ```

mod column_block;

pub use column_block::ColumnBlock;

use crate::error::{Error, Result};
use faer::{MatMut, MatRef};

/// A dense row-major `[rows x cols]` matrix of f32.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// A `[rows x cols]` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// Wraps `data` (row-major) as `[rows x cols]`; errors if the length is not `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::shape(
                "matrix data",
                format!("{rows} x {cols} = {} values", rows * cols),
                format!("{} values", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Builds `[rows x cols]` from a function of `(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Matrix { rows, cols, data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The row-major values, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the matrix, returning its row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Row `i` (panics if `i >= rows`: an internal invariant, not user input).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Element `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }

    /// faer view (row stride `cols`, column stride 1).
    pub fn as_faer(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// Mutable faer view.
    pub fn as_faer_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// Columns `start..start + width` of every row, as a new matrix.
    pub fn columns(&self, start: usize, width: usize) -> Matrix {
        Matrix::from_fn(self.rows, width, |i, j| self.get(i, start + j))
    }

    /// Columns `start .. start + width`, read in place; `None` if they are not all inside.
    pub fn column_block(&self, start: usize, width: usize) -> Option<ColumnBlock<'_>> {
        ColumnBlock::new(self, start, width)
    }

    /// Errors unless the shape is `[rows x cols]`.
    pub fn expect_shape(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        if self.rows != rows || self.cols != cols {
            return Err(Error::shape(what, format!("[{rows} x {cols}]"), format!("[{} x {}]", self.rows, self.cols)));
        }
        Ok(())
    }

    /// Errors unless the matrix has `cols` columns.
    pub fn expect_cols(&self, what: &str, cols: usize) -> Result<()> {
        if self.cols != cols {
            return Err(Error::shape(what, format!("[N x {cols}]"), format!("[{} x {}]", self.rows, self.cols)));
        }
        Ok(())
    }

    /// Largest absolute value (0 for an empty matrix).
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// Largest absolute element-wise difference to `other` (same shape assumed).
    pub fn max_abs_diff(&self, other: &Matrix) -> f32 {
        self.data.iter().zip(&other.data).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
    }
}
