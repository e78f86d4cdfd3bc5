//! `CrossEntropy`: softmax cross-entropy with label smoothing, as PyTorch's
//! `CrossEntropyLoss(label_smoothing=eps)` and timm's `LabelSmoothingCrossEntropy`, mean over
//! the batch, with its backward beside it.
//!
//! ```text
//! logits [B x K], targets [B]
//! p = softmax(logits),  q = (1 - eps) onehot(target) + eps / K
//! loss = mean_b  sum_k -q_k ln p_k                       forward
//! dlogits = (p - q) / B                                  backward
//! ```
//!
//! ```
//! use patchgraph::{Matrix, nn::CrossEntropy};
//! let logits = Matrix::from_vec(1, 2, vec![0.0, 0.0]).unwrap();
//! let (loss, grad) = CrossEntropy { smoothing: 0.0 }.forward_backward(&logits, &[1]).unwrap();
//! assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
//! assert_eq!(grad.as_slice(), &[0.5, -0.5]);
//! ```

use crate::error::{Error, Result, ensure_finite};
use crate::tensor::Matrix;

/// Softmax cross-entropy with label smoothing `smoothing` in `[0, 1)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// `eps`: the share of the target mass spread evenly over all `K` classes.
    pub smoothing: f32,
}

impl CrossEntropy {
    /// The mean loss over the batch and `dL/dlogits` `[B x K]`.
    pub fn forward_backward(&self, logits: &Matrix, targets: &[usize]) -> Result<(f32, Matrix)> {
        // logits [B x K], targets [B] -> loss, dlogits [B x K]
        let (b, k) = logits.shape();
        if targets.len() != b {
            return Err(Error::shape(
                "cross-entropy targets",
                format!("{b} (one per row)"),
                format!("{}", targets.len()),
            ));
        }
        if b == 0 || k == 0 {
            return Err(Error::invalid("cross-entropy logits", format!("[{b} x {k}] is empty")));
        }
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, t)| **t >= k) {
            return Err(Error::invalid("cross-entropy target", format!("target[{i}] = {t} is not below {k} classes")));
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return Err(Error::invalid("label smoothing", format!("{} is not in [0, 1)", self.smoothing)));
        }
        ensure_finite("cross-entropy logits", logits.as_slice())?;
        let eps = self.smoothing as f64;
        let mut grad = Matrix::zeros(b, k);
        let mut total = 0.0f64;
        for (i, &t) in targets.iter().enumerate() {
            let row = logits.row(i);
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            let log_z = m + z.ln();
            let g = grad.row_mut(i);
            for (c, (&v, gc)) in row.iter().zip(g.iter_mut()).enumerate() {
                let log_p = v as f64 - log_z;
                let q = eps / k as f64 + if c == t { 1.0 - eps } else { 0.0 };
                total -= q * log_p;
                *gc = ((log_p.exp() - q) / b as f64) as f32;
            }
        }
        Ok(((total / b as f64) as f32, grad))
    }
}
