//! Seeded parameter initialisation: the same seed gives the same numbers on every machine.
//!
//! `Init` wraps a ChaCha8 generator (portable, reproducible). The schemes are the peers':
//! PyTorch's `Linear` default (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`), Glorot/Xavier uniform
//! (PyG's `glorot`) and a truncated normal (timm's `trunc_normal_(std=0.02)`).
//!
//! ```
//! use patchgraph::nn::Init;
//! let a: Vec<f32> = Init::new(7).glorot(3, 4);
//! let b: Vec<f32> = Init::new(7).glorot(3, 4);
//! assert_eq!(a, b);
//! let bound = (6.0f32 / 7.0).sqrt();
//! assert!(a.iter().all(|x| x.abs() <= bound));
//! ```

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded source of initial parameter values.
#[derive(Clone, Debug)]
pub struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Init { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.rng.random::<f32>()).collect()
    }

    /// One standard normal value (Box-Muller).
    pub fn normal_one(&mut self) -> f32 {
        let u1: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]
        let u2: f64 = self.rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// `n` values `N(0, std^2)`.
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| std * self.normal_one()).collect()
    }

    /// `n` values `N(0, std^2)` redrawn until inside `[-2 std, 2 std]` (timm's trunc_normal_).
    pub fn trunc_normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                loop {
                    let x = self.normal_one();
                    if x.abs() <= 2.0 {
                        break std * x;
                    }
                }
            })
            .collect()
    }

    /// Glorot/Xavier uniform for a `[fan_out x fan_in]` weight: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    pub fn glorot(&mut self, fan_out: usize, fan_in: usize) -> Vec<f32> {
        let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
        self.uniform(fan_out * fan_in, -a, a)
    }

    /// PyTorch's `nn.Linear` default for `[fan_out x fan_in]`: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    pub fn torch_linear(&mut self, fan_out: usize, fan_in: usize) -> Vec<f32> {
        let a = 1.0 / (fan_in.max(1) as f32).sqrt();
        self.uniform(fan_out * fan_in, -a, a)
    }
}
