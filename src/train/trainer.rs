//! The training loop for any [`Classifier`] ([`crate::nn::Vit`], [`crate::nn::PatchGat`], [`crate::nn::Vig`]) on a labelled image set: shuffled batches with augmentation,
//! forward and backward, gradient clipping, AdamW on a warm-up + cosine schedule, evaluation.
//! Deterministic for a seed whatever the thread count: shuffling and augmentation draw from one
//! seeded generator per epoch, and every kernel's arithmetic is fixed.
//!
//! ```text
//! for epoch:  order = shuffle(seed, epoch)
//!   for batch: images = normalise(augment(x)) ; (loss, grads) = vit.loss_and_grads(images, y)
//!              clip(grads) ; lr = schedule(step) ; AdamW(vit, grads)
//!   evaluate on the test set -> EpochMetrics
//! ```
//!
//! ```
//! use patchgraph::data::{Split, load_mnist};
//! use patchgraph::nn::{Init, Vit, VitConfig};
//! use patchgraph::train::{AdamW, TrainConfig, train};
//! let data = load_mnist(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k"), Split::Test).unwrap();
//! let mut c = VitConfig::tiny(28, 7, 10);
//! (c.in_chans, c.embed_dim, c.depth, c.num_heads) = (1, 16, 1, 2);
//! let mut vit = Vit::new(c, &mut Init::new(0)).unwrap();
//! let config = TrainConfig { epochs: 1, batch_size: 50, limit: Some(100), ..TrainConfig::mnist() };
//! let mut opt = AdamW::new(config.lr, config.weight_decay);
//! let metrics = train(&mut vit, &mut opt, &data, &data, &config, 0, &mut |_| {}, &mut |_, _, _| Ok(())).unwrap();
//! assert_eq!(metrics.len(), 1);
//! ```

use super::{AdamW, CosineSchedule, clip_grad_norm};
use crate::data::ImageDataset;
use crate::error::{Error, Result};
use crate::graph::GraphSpec;
use crate::image::ChwImage;
use crate::infer::top_k;
use crate::nn::{Classifier, CrossEntropy};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Hyper-parameters and data handling of [`train`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate of the cosine.
    pub min_lr: f32,
    /// Warm-up length in epochs.
    pub warmup_epochs: f32,
    /// AdamW's decoupled weight decay (weight matrices only).
    pub weight_decay: f32,
    /// Label smoothing of the cross-entropy.
    pub smoothing: f32,
    /// Clip the global gradient norm to this, if set.
    pub clip_grad: Option<f32>,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Random crop after zero padding by this many pixels (0: none).
    pub pad_crop: usize,
    /// Random horizontal flips (off for digits).
    pub flip: bool,
    /// Per-channel mean and std applied to the `[0, 1]` pixels.
    pub mean: Vec<f32>,
    /// See `mean`.
    pub std: Vec<f32>,
    /// Attention graphs (empty: complete in every layer).
    pub graphs: Vec<GraphSpec>,
    /// Use only the first `limit` training images (quick runs).
    pub limit: Option<usize>,
}

impl TrainConfig {
    /// Defaults for MNIST-like digits: AdamW 1e-3, wd 0.05, smoothing 0.1, clip 1.0, warm-up of
    /// one epoch, random crop with 2 pixels of padding, no flips, MNIST's mean and std.
    pub fn mnist() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_epochs: 1.0,
            weight_decay: 0.05,
            smoothing: 0.1,
            clip_grad: Some(1.0),
            seed: 0,
            pad_crop: 2,
            flip: false,
            mean: vec![0.1307],
            std: vec![0.3081],
            graphs: Vec::new(),
            limit: None,
        }
    }

    /// Checks every hyper-parameter against its domain; each error names the flag:
    /// at least one epoch (`--epochs 0` would write an untrained checkpoint as if trained), a
    /// positive batch, a finite positive learning rate with `0 <= min_lr <= lr`, a finite
    /// warm-up in `[0, epochs]`, finite non-negative weight decay, smoothing in `[0, 1)`, a
    /// positive clipping norm, and positive finite per-channel std.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, reason: String| Err(Error::invalid(flag, reason));
        if self.epochs == 0 {
            return bad("--epochs", "0 trains nothing: give at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch", "0: give at least 1 image per step".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", format!("{}: the learning rate must be positive and finite", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("min_lr", format!("{}: must be in [0, lr = {}]", self.min_lr, self.lr));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0 && self.warmup_epochs <= self.epochs as f32) {
            return bad("--warmup", format!("{}: must be in [0, --epochs = {}]", self.warmup_epochs, self.epochs));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay", format!("{}: must be non-negative and finite", self.weight_decay));
        }
        if !(self.smoothing >= 0.0 && self.smoothing < 1.0) {
            return bad("--smoothing", format!("{}: label smoothing must be in [0, 1)", self.smoothing));
        }
        if let Some(c) = self.clip_grad.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return bad("clip_grad", format!("{c}: the clipping norm must be positive and finite"));
        }
        if self.mean.is_empty() || self.std.is_empty() {
            return bad("mean/std", "give at least one value each".into());
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad("std", format!("{s}: every channel's std must be positive and finite"));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad("mean", format!("{m}: must be finite"));
        }
        Ok(())
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f32,
    /// Training accuracy (on the augmented batches, as they were seen).
    pub train_accuracy: f32,
    /// Test loss (no smoothing).
    pub test_loss: f32,
    /// Test accuracy.
    pub test_accuracy: f32,
    /// Learning rate at the epoch's last step.
    pub lr: f32,
    /// Training images per second (forward, backward, update).
    pub images_per_second: f32,
    /// Wall time of the epoch's training steps.
    pub seconds: f32,
}

/// Progress within an epoch, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct BatchProgress {
    /// 1-based epoch.
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Running mean loss.
    pub loss: f32,
    /// Running accuracy.
    pub accuracy: f32,
    /// Images per second so far.
    pub images_per_second: f32,
}

/// `(x - mean) / std` per channel, in place.
fn normalise(image: &mut ChwImage, mean: &[f32], std: &[f32]) {
    let (c, h, w) = image.shape();
    let data = image.as_mut_slice();
    for ch in 0..c {
        let (m, s) = (mean[ch.min(mean.len() - 1)], std[ch.min(std.len() - 1)]);
        data[ch * h * w..(ch + 1) * h * w].iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// Zero-pads by `pad` and crops back at offset `(dy, dx)` in `0 ..= 2 pad`; flips if asked.
fn augment(image: &ChwImage, pad: usize, dy: usize, dx: usize, flip: bool) -> Result<ChwImage> {
    let (c, h, w) = image.shape();
    ChwImage::from_fn(c, h, w, |ch, y, x| {
        let x = if flip { w - 1 - x } else { x };
        let (sy, sx) = ((y + dy) as isize - pad as isize, (x + dx) as isize - pad as isize);
        if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
            0.0
        } else {
            image.get(ch, sy as usize, sx as usize)
        }
    })
}

/// Test-set loss (no smoothing) and accuracy, in batches.
pub fn evaluate<M: Classifier>(model: &M, data: &ImageDataset, config: &TrainConfig) -> Result<(f32, f32)> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(config.batch_size.max(1)) {
        let (mut images, labels): (Vec<ChwImage>, Vec<usize>) =
            chunk.iter().map(|&i| data.get(i)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
        images.iter_mut().for_each(|im| normalise(im, &config.mean, &config.std));
        let logits = model.logits(&images, &config.graphs)?;
        let (loss, _) = CrossEntropy { smoothing: 0.0 }.forward_backward(&logits, &labels)?;
        loss_sum += loss as f64 * chunk.len() as f64;
        correct += (0..labels.len()).filter(|&r| top_k(logits.row(r), 1)[0].0 == labels[r]).count();
    }
    let n = data.len().max(1) as f64;
    Ok(((loss_sum / n) as f32, (correct as f64 / n) as f32))
}

/// Trains `model` for `config.epochs - start_epoch` epochs (resume from `start_epoch` with the
/// optimiser's restored state); `on_batch` sees progress, `on_epoch` each epoch's metrics with
/// the model and optimiser as they are at its end (to write files and checkpoints). Returns the
/// metrics of the epochs run.
///
/// Errors before the first step: [`TrainConfig::validate`]'s, an empty training set, a model
/// whose classes, input shape or mean/std do not fit the data, and a resume that does not fit
/// the schedule (`start_epoch` not below `epochs`, or an optimiser whose step count is not
/// `start_epoch` epochs of this configuration's batches).
#[allow(clippy::too_many_arguments)]
pub fn train<M: Classifier>(
    model: &mut M,
    opt: &mut AdamW,
    train_set: &ImageDataset,
    test: &ImageDataset,
    config: &TrainConfig,
    start_epoch: usize,
    on_batch: &mut dyn FnMut(BatchProgress),
    on_epoch: &mut dyn FnMut(&EpochMetrics, &M, &AdamW) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    config.validate()?;
    let n = config.limit.map_or(train_set.len(), |l| l.min(train_set.len()));
    if n == 0 {
        return Err(Error::invalid("training", "no training images (an empty set, or --limit 0)"));
    }
    let channels = train_set.shape().0;
    for (name, v) in [("mean", &config.mean), ("std", &config.std)] {
        if v.len() != 1 && v.len() != channels {
            return Err(Error::invalid(
                format!("training `{name}`"),
                format!("{} values for {channels}-channel images: give 1 or {channels}", v.len()),
            ));
        }
    }
    if model.num_classes() < train_set.classes {
        return Err(Error::invalid(
            "training",
            format!("the model has {} classes, the data {}", model.num_classes(), train_set.classes),
        ));
    }
    if model.input_shape() != train_set.shape() {
        return Err(Error::shape(
            "training images",
            format!("{:?} (the model's input)", model.input_shape()),
            format!("{:?}", train_set.shape()),
        ));
    }
    let steps_per_epoch = n.div_ceil(config.batch_size) as u64;
    let schedule = CosineSchedule {
        base_lr: config.lr,
        min_lr: config.min_lr,
        warmup_lr: config.lr * 1e-2,
        warmup_steps: (config.warmup_epochs * steps_per_epoch as f32) as u64,
        total_steps: steps_per_epoch * config.epochs as u64,
    };
    // A resumed run continues its own schedule: the optimiser's step count must be where
    // `start_epoch` epochs of this configuration leave it.
    if start_epoch >= config.epochs {
        return Err(Error::invalid(
            "resume",
            format!(
                "{start_epoch} epochs are already done, the schedule has {}: give a larger --epochs to train on",
                config.epochs
            ),
        ));
    }
    if opt.steps() != start_epoch as u64 * steps_per_epoch {
        return Err(Error::invalid(
            "resume",
            format!(
                "the optimiser has taken {} steps, but {start_epoch} epochs of {steps_per_epoch} batches are {}: \
                 the state is from another run (other --batch, --limit or data)",
                opt.steps(),
                start_epoch as u64 * steps_per_epoch
            ),
        ));
    }
    let mut all = Vec::new();
    for epoch in start_epoch..config.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let batches = order.chunks(config.batch_size).count();
        let mut lr = config.lr;
        for (bi, chunk) in order.chunks(config.batch_size).enumerate() {
            let mut images = Vec::with_capacity(chunk.len());
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let (image, label) = train_set.get(i)?;
                let span = 2 * config.pad_crop + 1;
                let (dy, dx) = (rng.random_range(0..span), rng.random_range(0..span));
                let flip = config.flip && rng.random::<bool>();
                let mut image =
                    if config.pad_crop > 0 || flip { augment(&image, config.pad_crop, dy, dx, flip)? } else { image };
                normalise(&mut image, &config.mean, &config.std);
                images.push(image);
                labels.push(label);
            }
            let (loss, mut grads, logits) =
                model.loss_grads_logits(&images, &labels, config.smoothing, &config.graphs)?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("training loss (epoch {}, batch {bi})", epoch + 1),
                    position: 0,
                    value: loss,
                });
            }
            if let Some(max) = config.clip_grad {
                clip_grad_norm(&mut M::grad_slices(&mut grads), max);
            }
            lr = schedule.lr(opt.steps());
            opt.lr = lr;
            opt.begin_step();
            model.visit_params_mut(&grads, &mut |slot, p, g, decay| opt.update(slot, p, g, decay));
            opt.end_step()?;
            loss_sum += loss as f64 * chunk.len() as f64;
            correct += (0..labels.len()).filter(|&r| top_k(logits.row(r), 1)[0].0 == labels[r]).count();
            seen += chunk.len();
            on_batch(BatchProgress {
                epoch: epoch + 1,
                batch: bi + 1,
                batches,
                loss: (loss_sum / seen as f64) as f32,
                accuracy: correct as f32 / seen as f32,
                images_per_second: seen as f32 / started.elapsed().as_secs_f32().max(1e-9),
            });
        }
        let seconds = started.elapsed().as_secs_f32();
        let (test_loss, test_accuracy) = evaluate(model, test, config)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: (loss_sum / seen as f64) as f32,
            train_accuracy: correct as f32 / seen as f32,
            test_loss,
            test_accuracy,
            lr,
            images_per_second: seen as f32 / seconds.max(1e-9),
            seconds,
        };
        on_epoch(&m, model, opt)?;
        all.push(m);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augment_shifts_and_flips() {
        let im = ChwImage::from_fn(1, 3, 3, |_, y, x| (3 * y + x) as f32).unwrap();
        // pad 1, offset (0, 0): the image moves down-right by one, zeros enter top and left
        let a = augment(&im, 1, 0, 0, false).unwrap();
        assert_eq!(a.as_slice(), &[0., 0., 0., 0., 0., 1., 0., 3., 4.]);
        // offset (1, 1) with pad 1 is the identity; flipped it mirrors the columns
        assert_eq!(augment(&im, 1, 1, 1, false).unwrap(), im);
        assert_eq!(augment(&im, 1, 1, 1, true).unwrap().as_slice(), &[2., 1., 0., 5., 4., 3., 8., 7., 6.]);
    }
}
