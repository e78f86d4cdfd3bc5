//! The landmarks of a Nyström call ([`Landmarks`]: which token each landmark averages, 1-D
//! segments as the `nystrom-attention` package or 2-D patch blocks) and the checked sizes of a
//! call ([`validate`]): the problem that [`crate::kernels::nystrom`] solves fast and
//! [`crate::attention::nystrom`] defines in f64 (with the layouts drawn in its docs).
//!
//! ```
//! use patchgraph::attention::nystrom::Landmarks;
//! let lm = Landmarks::segments(10, 4).unwrap(); // 4 landmarks of 3 tokens, 2 of padding in front
//! assert_eq!((lm.n(), lm.count(), lm.padding()), (10, 4, 2));
//! ```

use super::AttentionInputs;
use crate::error::{Error, Result, ensure_finite, ensure_finite_block};
use crate::tensor::Matrix;

/// Which landmark each token of a block belongs to, and what each landmark's mean divides by.
///
/// Every block of a batch has the same `n` tokens and the same layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landmarks {
    /// The landmark of each token of a block, `n` entries below `count`.
    assignment: Vec<u32>,
    /// `m`.
    count: usize,
    /// Divisor of each landmark's mean (`m` entries): its token count, plus the zero tokens of
    /// the front padding that fall into it for [`Landmarks::segments`].
    divisor: Vec<u32>,
    /// Zero tokens padded in front (only [`Landmarks::segments`] with `m` not dividing `n`): they
    /// join `A3`'s softmax as keys of score 0 and value 0.
    padding: usize,
}

impl Landmarks {
    /// The peer's landmarks: `m` means of consecutive segments of `l = ceil(n / m)` tokens, after
    /// `p = m l - n` zero tokens padded at the front (`p = 0` when `m` divides `n`); every
    /// divisor is `l` (padded tokens count).
    ///
    /// ```
    /// use patchgraph::attention::nystrom::Landmarks;
    /// let lm = Landmarks::segments(10, 4).unwrap(); // [0 0 t0 | t1 t2 t3 | t4 t5 t6 | t7 t8 t9]
    /// assert_eq!(lm.assignment(), &[0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
    /// assert_eq!((lm.count(), lm.padding(), lm.divisor(0)), (4, 2, 3));
    /// ```
    pub fn segments(n: usize, m: usize) -> Result<Landmarks> {
        check_count(n, m)?;
        let l = n.div_ceil(m);
        let padding = m * l - n;
        let assignment = (0..n).map(|t| ((t + padding) / l) as u32).collect();
        Ok(Landmarks { assignment, count: m, divisor: vec![l as u32; m], padding })
    }

    /// Landmarks for images: each of the `prefix` leading tokens (a class token) is its own
    /// landmark, then the `rows x cols` patch grid (row-major, tokens `prefix ..`) is cut into
    /// `side_rows x side_cols` blocks, each averaged over its patches. Block `r` covers patch
    /// rows `floor(r rows / side_rows) .. floor((r + 1) rows / side_rows)`, columns alike;
    /// landmark `prefix + r side_cols + c`.
    ///
    /// ```
    /// use patchgraph::attention::nystrom::Landmarks;
    /// let lm = Landmarks::grid(2, 3, 1, 2, 1).unwrap(); // class token + 2 x 3 patches, 1 x 2 blocks
    /// // column bands: floor(0 * 3 / 2) .. floor(3 / 2) = 0 .. 1, then 1 .. 3
    /// assert_eq!(lm.assignment(), &[0, 1, 2, 2, 1, 2, 2]);
    /// assert_eq!((lm.count(), lm.divisor(0), lm.divisor(1), lm.divisor(2)), (3, 1, 2, 4));
    /// ```
    pub fn grid(rows: usize, cols: usize, side_rows: usize, side_cols: usize, prefix: usize) -> Result<Landmarks> {
        if side_rows == 0 || side_cols == 0 {
            return Err(Error::invalid(
                "landmarks",
                format!("grid sides must be at least 1, got {side_rows} x {side_cols}"),
            ));
        }
        if side_rows > rows || side_cols > cols {
            return Err(Error::invalid(
                "landmarks",
                format!("grid sides {side_rows} x {side_cols} exceed the {rows} x {cols} patch grid"),
            ));
        }
        let n = rows
            .checked_mul(cols)
            .and_then(|p| p.checked_add(prefix))
            .filter(|&n| n <= crate::limits::MAX_TOKENS)
            .ok_or_else(|| {
                Error::invalid(
                    "landmarks",
                    format!("{prefix} + {rows} x {cols} tokens exceed {}", crate::limits::MAX_TOKENS),
                )
            })?;
        // Block index of each patch row / column.
        let band = |len: usize, sides: usize| -> Vec<usize> {
            let mut of = vec![0usize; len];
            for r in 0..sides {
                for x in of.iter_mut().take((r + 1) * len / sides).skip(r * len / sides) {
                    *x = r;
                }
            }
            of
        };
        let (row_band, col_band) = (band(rows, side_rows), band(cols, side_cols));
        let count = prefix + side_rows * side_cols;
        let mut assignment = Vec::with_capacity(n);
        assignment.extend((0..prefix).map(|t| t as u32));
        for &r in &row_band[..rows] {
            for &c in &col_band[..cols] {
                assignment.push((prefix + r * side_cols + c) as u32);
            }
        }
        Landmarks::from_assignment(assignment, count)
    }

    /// Any layout: token `t` of a block belongs to landmark `assignment[t] < count`; each
    /// landmark's divisor is its token count (no padding). Every landmark needs a token.
    pub fn from_assignment(assignment: Vec<u32>, count: usize) -> Result<Landmarks> {
        check_count(assignment.len(), count)?;
        let mut divisor = vec![0u32; count];
        for (t, &j) in assignment.iter().enumerate() {
            let Some(c) = divisor.get_mut(j as usize) else {
                return Err(Error::invalid(
                    "landmarks",
                    format!("token {t} is assigned to landmark {j}, but there are only {count}"),
                ));
            };
            *c += 1;
        }
        if let Some(j) = divisor.iter().position(|&c| c == 0) {
            return Err(Error::invalid("landmarks", format!("landmark {j} has no token")));
        }
        Ok(Landmarks { assignment, count, divisor, padding: 0 })
    }

    /// Tokens per block, `n`.
    pub fn n(&self) -> usize {
        self.assignment.len()
    }

    /// Number of landmarks, `m`.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The landmark of each token.
    pub fn assignment(&self) -> &[u32] {
        &self.assignment
    }

    /// What landmark `j`'s mean divides by.
    pub fn divisor(&self, j: usize) -> u32 {
        self.divisor[j]
    }

    /// Zero tokens padded in front (keys of score 0 in `A3`'s softmax).
    pub fn padding(&self) -> usize {
        self.padding
    }
}

/// `m` landmarks for blocks of `n` tokens: `1 <= m <= n`.
fn check_count(n: usize, m: usize) -> Result<()> {
    if m == 0 {
        return Err(Error::invalid("landmarks", "need at least one landmark"));
    }
    if m > n {
        return Err(Error::invalid("landmarks", format!("{m} landmarks for blocks of {n} tokens (at most {n})")));
    }
    if n > crate::limits::MAX_TOKENS {
        return Err(Error::invalid("landmarks", format!("{n} tokens exceed {}", crate::limits::MAX_TOKENS)));
    }
    Ok(())
}

/// The options of a Nyström layer (the peer's `pinv_iterations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NystromOptions {
    /// Iterations of the pseudo-inverse (the peer's default: 6).
    pub iterations: usize,
}

impl Default for NystromOptions {
    fn default() -> Self {
        NystromOptions { iterations: 6 }
    }
}

/// The sizes of one Nyström call, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NystromDims {
    /// `N`, all blocks together.
    pub nodes: usize,
    /// `H`.
    pub heads: usize,
    /// Query/key width per head, `d`.
    pub key_dim: usize,
    /// Value width per head, `dv`.
    pub value_dim: usize,
    /// Tokens per block, `n`.
    pub block: usize,
    /// Landmarks per block, `m`.
    pub landmarks: usize,
    /// Number of blocks.
    pub blocks: usize,
    /// Width of the residual convolution (0: none).
    pub kernel: usize,
}

/// Checks every shape of a Nyström call (and that the inputs are finite); returns the sizes.
pub(crate) fn validate(
    inputs: &AttentionInputs<'_>,
    blocks: &[usize],
    landmarks: &Landmarks,
    res_conv: Option<&Matrix>,
) -> Result<NystromDims> {
    let h = inputs.heads;
    if h == 0 {
        return Err(Error::invalid("heads", "must be at least 1"));
    }
    if inputs.bias.is_some() {
        return Err(Error::invalid("nystrom attention bias", "Nyström attention takes no edge bias"));
    }
    let n_all = inputs.query.rows();
    if blocks.first() != Some(&0) || blocks.last() != Some(&n_all) {
        return Err(Error::shape(
            "nystrom blocks",
            format!("offsets from 0 to {n_all} (the query rows)"),
            format!("{blocks:?}"),
        ));
    }
    let n = landmarks.n();
    if let Some(w) = blocks.windows(2).find(|w| w[1] < w[0] || w[1] - w[0] != n) {
        return Err(Error::shape(
            "nystrom block",
            format!("{n} tokens (the landmarks' n)"),
            format!("offsets {} .. {}", w[0], w[1]),
        ));
    }
    for (name, m) in [("query", inputs.query), ("key", inputs.key), ("value", inputs.value)] {
        if m.rows() != n_all {
            return Err(Error::shape(
                format!("nystrom {name}"),
                format!("{n_all} rows (one per token)"),
                format!("{} rows", m.rows()),
            ));
        }
        if m.cols() % h != 0 || m.cols() == 0 {
            return Err(Error::shape(
                format!("nystrom {name}"),
                format!("a positive multiple of {h} heads columns"),
                format!("{} columns", m.cols()),
            ));
        }
    }
    if inputs.key.cols() != inputs.query.cols() {
        return Err(Error::shape(
            "nystrom key",
            format!("{} columns like the query", inputs.query.cols()),
            format!("{} columns", inputs.key.cols()),
        ));
    }
    let mut kernel = 0;
    if let Some(w) = res_conv {
        if w.rows() != h || w.cols() % 2 == 0 {
            return Err(Error::shape(
                "nystrom res_conv",
                format!("[{h} x K] (one kernel per head, K odd)"),
                format!("[{} x {}]", w.rows(), w.cols()),
            ));
        }
        kernel = w.cols();
        ensure_finite("nystrom res_conv", w.as_slice())?;
    }
    ensure_finite_block("nystrom query", inputs.query)?;
    ensure_finite_block("nystrom key", inputs.key)?;
    ensure_finite_block("nystrom value", inputs.value)?;
    Ok(NystromDims {
        nodes: n_all,
        heads: h,
        key_dim: inputs.query.cols() / h,
        value_dim: inputs.value.cols() / h,
        block: n,
        landmarks: landmarks.count(),
        blocks: blocks.len() - 1,
        kernel,
    })
}
