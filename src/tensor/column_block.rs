//! `ColumnBlock`: columns `start .. start + width` of every row of a [`Matrix`] (or of a
//! caller's row-major slice), read in place.
//!
//! A fused projection writes `[N x (q | k | v)]` into one matrix; attention reads `q`, `k` and
//! `v` as three column blocks of it, with row stride `cols`, instead of copying them out.
//!
//! ```text
//! parent [N x C], block = parent[:, start .. start + width]   row i = parent.row(i)[start ..]
//! ```
//!
//! ```
//! use patchgraph::Matrix;
//! let m = Matrix::from_vec(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
//! let b = m.column_block(1, 2).unwrap();
//! assert_eq!((b.rows(), b.cols()), (2, 2));
//! assert_eq!(b.row(1), &[5., 6.]);
//! assert_eq!(b.as_faer()[(0, 1)], 3.0);
//! ```

use super::Matrix;
use crate::error::{Error, Result};
use faer::MatRef;

/// A read-only block of whole columns of a row-major `[rows x stride]` buffer: a [`Matrix`],
/// or a caller's slice (a NumPy array, a torch tensor's storage) read without copying.
#[derive(Clone, Copy, Debug)]
pub struct ColumnBlock<'a> {
    data: &'a [f32],
    rows: usize,
    stride: usize,
    start: usize,
    width: usize,
}

impl<'a> ColumnBlock<'a> {
    /// Columns `start .. start + width` of `parent`; `None` if they are not all inside it.
    pub fn new(parent: &'a Matrix, start: usize, width: usize) -> Option<Self> {
        (start.checked_add(width)? <= parent.cols()).then_some(ColumnBlock {
            data: parent.as_slice(),
            rows: parent.rows(),
            stride: parent.cols(),
            start,
            width,
        })
    }

    /// A row-major `[rows x cols]` slice read in place (every column).
    ///
    /// ```
    /// use patchgraph::ColumnBlock;
    /// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let b = ColumnBlock::from_slice(&data, 3, 2).unwrap();
    /// assert_eq!(b.row(2), &[5.0, 6.0]);
    /// assert!(ColumnBlock::from_slice(&data, 4, 2).is_err()); // 8 values needed
    /// ```
    ///
    /// Errors ([`Error::Shape`]) unless `data` holds exactly `rows * cols` values.
    pub fn from_slice(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::shape("row-major block", format!("{rows} x {cols} values"), format!("{}", data.len())));
        }
        Ok(ColumnBlock { data, rows, stride: cols, start: 0, width: cols })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns in the block.
    pub fn cols(&self) -> usize {
        self.width
    }

    /// Errors ([`Error::Shape`], naming `what`) unless the block is `[rows x cols]`.
    pub fn expect_shape(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        if self.rows != rows || self.width != cols {
            return Err(Error::shape(what, format!("[{rows} x {cols}]"), format!("[{} x {}]", self.rows, self.width)));
        }
        Ok(())
    }

    /// Row `i` of the block (panics if `i >= rows`: an internal invariant, not user input).
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        let at = i * self.stride + self.start;
        &self.data[at..at + self.width]
    }

    /// The block as one row-major slice, when it is every column of its buffer (`None` for a
    /// block of some columns only).
    pub fn as_contiguous(&self) -> Option<&'a [f32]> {
        (self.start == 0 && self.width == self.stride).then(|| &self.data[..self.rows * self.stride])
    }

    /// Element `(i, j)` of the block.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        debug_assert!(j < self.width);
        self.row(i)[j]
    }

    /// faer view (row stride: the buffer's width, column stride 1).
    pub fn as_faer(&self) -> MatRef<'a, f32> {
        let full = MatRef::from_row_major_slice(self.data, self.rows, self.stride);
        full.subcols(self.start, self.width)
    }

    /// The block as a new contiguous matrix.
    pub fn to_matrix(&self) -> Matrix {
        Matrix::from_fn(self.rows(), self.width, |i, j| self.get(i, j))
    }
}

impl<'a> From<&'a Matrix> for ColumnBlock<'a> {
    fn from(m: &'a Matrix) -> Self {
        ColumnBlock { data: m.as_slice(), rows: m.rows(), stride: m.cols(), start: 0, width: m.cols() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_reads_the_parent_columns() {
        let m = Matrix::from_fn(4, 7, |i, j| (10 * i + j) as f32);
        let b = m.column_block(2, 3).unwrap();
        for i in 0..4 {
            assert_eq!(b.row(i), &[(10 * i + 2) as f32, (10 * i + 3) as f32, (10 * i + 4) as f32]);
            for j in 0..3 {
                assert_eq!(b.as_faer()[(i, j)], m.get(i, j + 2));
            }
        }
        assert_eq!(b.to_matrix(), m.columns(2, 3));
        assert!(b.as_contiguous().is_none(), "some columns only");
        let whole = ColumnBlock::from(&m);
        assert_eq!(whole.to_matrix(), m);
        assert_eq!(whole.as_contiguous(), Some(m.as_slice()));
    }

    #[test]
    fn out_of_range_block_is_refused() {
        let m = Matrix::zeros(2, 5);
        assert!(m.column_block(3, 3).is_none());
        assert!(m.column_block(usize::MAX, 2).is_none());
        assert!(m.column_block(5, 0).is_some());
    }
}
