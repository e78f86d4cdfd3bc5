//! `CosineSchedule`: linear warm-up, then cosine decay to a floor, per optimiser step (timm's
//! `CosineLRScheduler` with `t_in_epochs=False`, no restarts).
//!
//! ```text
//! t < warmup:   lr = warmup_lr + (base_lr - warmup_lr) * t / warmup
//! t >= warmup:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2
//! ```
//!
//! ```
//! use patchgraph::train::CosineSchedule;
//! let s = CosineSchedule { base_lr: 1e-3, min_lr: 1e-5, warmup_lr: 1e-6, warmup_steps: 10, total_steps: 110 };
//! assert_eq!(s.lr(10), 1e-3);
//! assert!((s.lr(60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-9);
//! assert_eq!(s.lr(110), 1e-5);
//! ```

/// A warm-up + cosine learning-rate schedule over optimiser steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub base_lr: f32,
    /// Floor at the end.
    pub min_lr: f32,
    /// Learning rate at step 0.
    pub warmup_lr: f32,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Steps in all (the cosine ends here and stays at `min_lr`).
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate for step `t` (0-based).
    pub fn lr(&self, t: u64) -> f32 {
        if t < self.warmup_steps {
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * t as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((t - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_lr as f64 + (self.base_lr - self.min_lr) as f64 * cos) as f32
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when it is below 1); returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let norm =
        grads.iter().map(|g| g.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>()).sum::<f64>().sqrt() as f32;
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for g in grads.iter_mut() {
            g.iter_mut().for_each(|v| *v *= factor);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_cosine_is_monotone() {
        let s = CosineSchedule { base_lr: 1.0, min_lr: 0.0, warmup_lr: 0.0, warmup_steps: 4, total_steps: 14 };
        assert_eq!((s.lr(0), s.lr(2)), (0.0, 0.5));
        let tail: Vec<f32> = (4..=14).map(|t| s.lr(t)).collect();
        assert!(tail.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(s.lr(9), 0.5); // halfway through the cosine
        assert_eq!(s.lr(100), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]); // norm 5
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
        let mut c = vec![0.1f32];
        assert_eq!(clip_grad_norm(&mut [&mut c], 1.0), 0.1);
        assert_eq!(c[0], 0.1);
    }
}
