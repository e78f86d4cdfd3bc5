//! Training: [`AdamW`], the warm-up + cosine [`CosineSchedule`], gradient clipping, and the
//! loop [`train`] with its [`TrainConfig`].
//!
//! ```
//! use patchgraph::train::AdamW;
//! let opt = AdamW::new(1e-3, 0.05);
//! assert_eq!((opt.betas, opt.eps), ((0.9, 0.999), 1e-8));
//! ```

mod adamw;
mod memory;
mod schedule;
mod trainer;

pub use adamw::AdamW;
pub use memory::keep_freed_memory;
pub use schedule::{CosineSchedule, clip_grad_norm};
pub use trainer::{BatchProgress, EpochMetrics, TrainConfig, evaluate, train};
