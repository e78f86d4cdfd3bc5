//! Training: the optimiser (more of the training loop lands with issue #5).
//!
//! ```
//! use patchgraph::train::AdamW;
//! let opt = AdamW::new(1e-3, 0.05);
//! assert_eq!((opt.betas, opt.eps), ((0.9, 0.999), 1e-8));
//! ```

mod adamw;

pub use adamw::AdamW;
