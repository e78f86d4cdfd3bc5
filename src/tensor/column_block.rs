//! `ColumnBlock`: columns `start .. start + width` of every row of a [`Matrix`], read in place.
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
use faer::MatRef;

/// A read-only block of whole columns of a row-major [`Matrix`].
#[derive(Clone, Copy, Debug)]
pub struct ColumnBlock<'a> {
    parent: &'a Matrix,
    start: usize,
    width: usize,
}

impl<'a> ColumnBlock<'a> {
    /// Columns `start .. start + width` of `parent`; `None` if they are not all inside it.
    pub fn new(parent: &'a Matrix, start: usize, width: usize) -> Option<Self> {
        (start.checked_add(width)? <= parent.cols()).then_some(ColumnBlock { parent, start, width })
    }

    /// Number of rows (the parent's).
    pub fn rows(&self) -> usize {
        self.parent.rows()
    }

    /// Number of columns in the block.
    pub fn cols(&self) -> usize {
        self.width
    }

    /// Row `i` of the block (panics if `i >= rows`: an internal invariant, not user input).
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.parent.row(i)[self.start..self.start + self.width]
    }

    /// Element `(i, j)` of the block.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        debug_assert!(j < self.width);
        self.parent.get(i, self.start + j)
    }

    /// faer view (row stride: the parent's `cols`, column stride 1).
    pub fn as_faer(&self) -> MatRef<'a, f32> {
        self.parent.as_faer().subcols(self.start, self.width)
    }

    /// The block as a new contiguous matrix.
    pub fn to_matrix(&self) -> Matrix {
        Matrix::from_fn(self.rows(), self.width, |i, j| self.get(i, j))
    }
}

impl<'a> From<&'a Matrix> for ColumnBlock<'a> {
    fn from(m: &'a Matrix) -> Self {
        ColumnBlock { parent: m, start: 0, width: m.cols() }
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
        let whole = ColumnBlock::from(&m);
        assert_eq!(whole.to_matrix(), m);
    }

    #[test]
    fn out_of_range_block_is_refused() {
        let m = Matrix::zeros(2, 5);
        assert!(m.column_block(3, 3).is_none());
        assert!(m.column_block(usize::MAX, 2).is_none());
        assert!(m.column_block(5, 0).is_some());
    }
}
