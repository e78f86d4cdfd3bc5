//! Axis permutation of row-major tensors: NumPy's `transpose(perm)`, PyTorch's `permute(perm)`.
//!
//! Checkpoint formats disagree on layouts (JAX convolution kernels are HWIO, PyTorch's OIHW;
//! Fortran-ordered `.npy` arrays are stored column-major); [`permute_axes`] converts between them.
//!
//! ```
//! use patchgraph::checkpoint::permute_axes;
//! // [[1, 2, 3], [4, 5, 6]] transposed is [[1, 4], [2, 5], [3, 6]].
//! let t = permute_axes(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0]).unwrap();
//! assert_eq!(t, vec![1, 4, 2, 5, 3, 6]);
//! assert!(permute_axes(&[1, 2, 3], &[2, 3], &[1, 0]).is_err()); // 3 values for 6 positions
//! ```

use crate::error::{Error, Result};

/// Permutes the axes of the row-major tensor `data` of shape `shape`: axis `k` of the result is
/// axis `perm[k]` of the input, so the result has shape `[shape[perm[0]], shape[perm[1]], ...]`
/// and `out[i_0, ..., i_{n-1}] = data[j]` where `j[perm[k]] = i_k`.
///
/// Errors if `perm` is not a permutation of `0..shape.len()` or if `data` does not hold exactly
/// `shape.iter().product()` values.
pub fn permute_axes<T: Copy>(data: &[T], shape: &[usize], perm: &[usize]) -> Result<Vec<T>> {
    let rank = shape.len();
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm.iter().all(|&p| match seen.get_mut(p) {
            Some(s) if !*s => {
                *s = true;
                true
            }
            _ => false,
        });
    if !valid {
        return Err(Error::invalid(
            "axis permutation",
            format!("{perm:?} is not a permutation of the axes of {shape:?}"),
        ));
    }
    let count = shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
    if count != Some(data.len()) {
        return Err(Error::shape("tensor to permute", format!("{shape:?}"), format!("{} values", data.len())));
    }
    let mut out = Vec::with_capacity(data.len());
    if data.is_empty() {
        return Ok(out);
    }
    // Row-major strides of the input (no dimension is 0, so they fit), then the input stride of
    // each output axis.
    let mut in_strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        in_strides[k] = in_strides[k + 1] * shape[k + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    // Odometer over the output index; `offset` follows it in the input.
    let mut index = vec![0usize; rank];
    let mut offset = 0usize;
    loop {
        out.push(data[offset]);
        let mut axis = rank;
        loop {
            if axis == 0 {
                return Ok(out);
            }
            axis -= 1;
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < out_shape[axis] {
                break;
            }
            offset -= strides[axis] * index[axis];
            index[axis] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_axes_by_hand() {
        // x[i][j][k] = 100 i + 10 j + k with shape [2, 3, 2]; perm [2, 0, 1] gives y[k][i][j].
        let mut x = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..2 {
                    x.push(100 * i + 10 * j + k);
                }
            }
        }
        let y = permute_axes(&x, &[2, 3, 2], &[2, 0, 1]).unwrap();
        assert_eq!(y, vec![0, 10, 20, 100, 110, 120, 1, 11, 21, 101, 111, 121]);
    }

    #[test]
    fn identity_scalar_and_empty() {
        assert_eq!(permute_axes(&[7], &[], &[]).unwrap(), vec![7]);
        assert_eq!(permute_axes(&[1, 2, 3], &[3], &[0]).unwrap(), vec![1, 2, 3]);
        assert_eq!(permute_axes::<i32>(&[], &[0, 4], &[1, 0]).unwrap(), Vec::<i32>::new());
    }

    #[test]
    fn bad_permutations_are_errors() {
        assert!(permute_axes(&[1, 2], &[1, 2], &[0, 0]).is_err());
        assert!(permute_axes(&[1, 2], &[1, 2], &[0, 2]).is_err());
        assert!(permute_axes(&[1, 2], &[1, 2], &[0]).is_err());
        assert!(permute_axes(&[1, 2], &[usize::MAX, 2], &[1, 0]).is_err());
    }
}
