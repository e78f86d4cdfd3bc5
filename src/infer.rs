//! Inference with real checkpoints: load a timm safetensors file or a Google `.npz`, prepare
//! inputs as timm's evaluation transform does (or take already-prepared tensors), run the ViT on
//! any graph, rank the classes, and compare a sparse graph against the complete one.
//!
//! ```text
//! checkpoint (.safetensors timm names | .npz Google names -> timm names)
//!   + config (JSON or arch name)  -> Vit (num_classes from the head, pos_embed resampled)
//! inputs: image files -> resize shorter side to size / crop_pct (bicubic), centre crop, normalise
//!         .npy / .safetensors tensors [3, H, W] or [B, 3, H, W] -> used as they are
//! logits [B x K] -> softmax -> top-k (class, label, probability)
//! compare: same weights, complete vs sparse graph -> top-1 agreement, KL(complete || sparse), speed-up
//! ```
//!
//! ```
//! use patchgraph::infer::{softmax_rows, top_k};
//! use patchgraph::Matrix;
//! let p = softmax_rows(&Matrix::from_vec(1, 3, vec![1.0, 3.0, 2.0]).unwrap());
//! let top = top_k(p.row(0), 2);
//! assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
//! assert!((p.row(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

use crate::checkpoint::{TensorMap, google_vit_to_timm};
use crate::error::{Error, Result};
use crate::image::{ChwImage, ImageTransform, Interpolation, Normalization};
use crate::nn::{Vit, VitConfig, VitOptions};
use crate::tensor::Matrix;
use std::path::Path;
use std::time::Instant;

/// The ImageNet-1k class names bundled with the crate (`data/imagenet_labels.txt`).
pub const IMAGENET_LABELS: &str = include_str!("../data/imagenet_labels.txt");

/// Reads a checkpoint: safetensors as it is, a NumPy `.npz` as Google's ViT naming mapped to
/// timm's (transposes and head reshapes as timm's `_load_weights`), a PyTorch `.pth` / `.pt`
/// (zip, legacy or TorchScript) through the restricted unpickler of
/// [`read_pth`](crate::checkpoint::read_pth), which runs nothing from the file.
///
/// A NaN or infinity in any tensor is an [`Error::NonFinite`] naming the tensor and the index
/// when the model takes it (see [`load_checkpoint_with`] to allow them).
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<TensorMap> {
    load_checkpoint_with(path, false)
}

/// [`load_checkpoint`], with `allow_nonfinite` saying whether NaN and infinities load
/// (`--allow-nonfinite`, for people who know what they are doing) or are errors.
pub fn load_checkpoint_with(path: impl AsRef<Path>, allow_nonfinite: bool) -> Result<TensorMap> {
    Ok(load_checkpoint_noted(path, allow_nonfinite)?.0)
}

/// [`load_checkpoint_with`], also returning what reading chose and left (a `.pth` file's
/// nested state dict, the entries beside it), one line each.
pub fn load_checkpoint_noted(path: impl AsRef<Path>, allow_nonfinite: bool) -> Result<(TensorMap, Vec<String>)> {
    let (mut map, notes) = read_checkpoint(path.as_ref(), allow_nonfinite)?;
    map.set_allow_nonfinite(allow_nonfinite);
    Ok((map, notes))
}

fn read_checkpoint(path: &Path, allow_nonfinite: bool) -> Result<(TensorMap, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let what = path.display().to_string();
    let pytorch_name = path.extension().is_some_and(|e| e == "pth" || e == "pt" || e == "bin" || e == "ckpt");
    if crate::checkpoint::is_pth(&bytes) || (pytorch_name && !bytes.starts_with(b"PK")) {
        let pth = crate::checkpoint::read_pth(&bytes, &what)?;
        Ok((pth.map, pth.notes))
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let mut google = TensorMap::from_npz_bytes(&bytes, &what)?;
        google.set_allow_nonfinite(allow_nonfinite);
        // Named as the file names them (Google's), before the mapping moves values around.
        google.ensure_finite()?;
        Ok((google_vit_to_timm(google, &what)?, Vec::new()))
    } else {
        Ok((TensorMap::from_safetensors_bytes(&bytes, &what)?, Vec::new()))
    }
}

/// Loads a ViT checkpoint in any format [`load_checkpoint`] reads and any layout
/// [`to_timm_vit`](crate::checkpoint::to_timm_vit) knows (DDP, DINO, MAE, CLIP) for a model of
/// `config`, adapted as [`Vit::load_adapting`]. Returns the model and one line per choice or
/// adaptation made.
pub fn load_vit(path: impl AsRef<Path>, config: VitConfig) -> Result<(Vit, Vec<String>)> {
    load_vit_with(path, config, false)
}

/// [`load_vit`], with `allow_nonfinite` as for [`load_checkpoint_with`].
pub fn load_vit_with(path: impl AsRef<Path>, config: VitConfig, allow_nonfinite: bool) -> Result<(Vit, Vec<String>)> {
    let path = path.as_ref();
    let (map, mut notes) = load_checkpoint_noted(path, allow_nonfinite)?;
    let (map, layout) = crate::checkpoint::to_timm_vit(map)?;
    notes.extend(layout);
    let (vit, adapted) = Vit::load_adapting(config, map, &path.display().to_string())?;
    notes.extend(adapted);
    Ok((vit, notes))
}

/// timm's evaluation preprocessing for a model of `img_size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Crop size (the model's `img_size`).
    pub img_size: crate::nn::Size2,
    /// The model's input channels: 1 reads images as grey (PIL's `L`), 3 as RGB.
    pub in_chans: usize,
    /// The shorter side is resized to `floor(img_size / crop_pct)` first.
    pub crop_pct: f64,
    /// Resize filter.
    pub interpolation: Interpolation,
    /// Per-channel mean and std.
    pub normalization: Normalization,
}

impl Preprocess {
    /// The transform on decoded images: timm's eval transform (a square size: resize the
    /// shorter side to `floor(size / crop_pct)`; `[h, w]`: resize to `floor(h / crop_pct) x
    /// floor(w / crop_pct)`; then the centre crop), grey for one channel (the normalisation's
    /// first channel then applies).
    pub fn transform(&self) -> ImageTransform {
        let (h, w) = (self.img_size.h, self.img_size.w);
        let mut t = ImageTransform::timm_eval(h, self.crop_pct, self.normalization.clone());
        if h != w {
            let scale = |x: usize| (x as f64 / self.crop_pct).floor().max(0.0) as usize;
            t.resize = Some(crate::image::ResizeTo::Exact { height: scale(h), width: scale(w) });
            t.crop = Some(crate::image::CropSize { height: h, width: w });
        }
        if self.in_chans == 1 {
            t.channels = crate::image::Channels::Gray;
            if let Some(n) = t.normalize.as_mut() {
                n.mean.truncate(1);
                n.std.truncate(1);
            }
        }
        t.interpolation = self.interpolation;
        t
    }
}

/// One named input image, ready for the model.
#[derive(Clone, Debug)]
pub struct Input {
    /// The file, with `[i]` appended for the i-th image of a batch tensor.
    pub name: String,
    /// `[C x H x W]`, normalised.
    pub image: ChwImage,
}

/// Reads inputs: `.npy` and `.safetensors` files are taken as prepared tensors (`[C, H, W]` or
/// `[B, C, H, W]`, and for a one-channel model also `[H, W]` and `[B, H, W]`; a safetensors
/// file's tensor `input`, or its only tensor), anything else is decoded as an image and goes
/// through `preprocess`.
pub fn load_inputs(paths: &[impl AsRef<Path>], preprocess: &Preprocess) -> Result<Vec<Input>> {
    let transform = preprocess.transform();
    let mut inputs = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let name = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        let tensor = match ext.as_str() {
            "npy" => {
                let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
                Some(crate::checkpoint::read_npy(&bytes, &name)?)
            }
            "safetensors" => {
                let mut map = TensorMap::load_safetensors(path)?;
                let names = map.remaining();
                let key = if map.contains("input") {
                    "input".to_string()
                } else if names.len() == 1 {
                    names[0].clone()
                } else {
                    return Err(Error::Format {
                        path: name,
                        reason: format!("expected a tensor named `input` or a single tensor, found {names:?}"),
                    });
                };
                Some(map.take_any(&key)?)
            }
            _ => None,
        };
        match tensor {
            None => inputs.push(Input { image: transform.apply_path(path)?, name }),
            Some(t) => {
                let grey = preprocess.in_chans == 1;
                let (b, c, h, w) = match t.shape[..] {
                    [h, w] if grey => (1, 1, h, w),
                    [b, h, w] if grey && b != 1 => (b, 1, h, w),
                    [c, h, w] => (1, c, h, w),
                    [b, c, h, w] => (b, c, h, w),
                    _ => {
                        return Err(Error::shape(
                            format!("input tensor in {name}"),
                            if grey {
                                "[H, W], [B, H, W], [1, H, W] or [B, 1, H, W]"
                            } else {
                                "[C, H, W] or [B, C, H, W]"
                            },
                            format!("{:?}", t.shape),
                        ));
                    }
                };
                let size = c * h * w;
                for i in 0..b {
                    let image = ChwImage::new(c, h, w, t.data[i * size..(i + 1) * size].to_vec())?;
                    let name = if b == 1 { name.clone() } else { format!("{name}[{i}]") };
                    inputs.push(Input { name, image });
                }
            }
        }
    }
    Ok(inputs)
}

/// Class names, one per line; `None` = the bundled ImageNet-1k names when `classes == 1000`.
pub fn load_labels(path: Option<&Path>, classes: usize) -> Result<Option<Vec<String>>> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| Error::Io { path: p.to_path_buf(), source })?,
        None if classes == 1000 => IMAGENET_LABELS.to_string(),
        None => return Ok(None),
    };
    let labels: Vec<String> = text.lines().map(str::to_string).collect();
    if labels.len() != classes {
        return Err(Error::invalid(
            "labels",
            format!(
                "{} has {} lines for a model of {classes} classes",
                path.map_or("the bundled list".into(), |p| p.display().to_string()),
                labels.len()
            ),
        ));
    }
    Ok(Some(labels))
}

/// Row-wise softmax (max-subtracted).
pub fn softmax_rows(logits: &Matrix) -> Matrix {
    let mut p = logits.clone();
    for i in 0..p.rows() {
        let row = p.row_mut(i);
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut s = 0.0f64;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v as f64;
        }
        let inv = (1.0 / s) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    p
}

/// The `k` largest entries as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}

/// `KL(p || q) = sum p ln(p / q)` in f64 (terms with `p = 0` contribute 0).
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(&a, &b)| a as f64 * ((a as f64).ln() - (b as f64).max(f64::MIN_POSITIVE).ln()))
        .sum()
}

/// One forward, timed: probabilities `[B x K]` and the median seconds of `runs` forwards.
pub fn predict(vit: &Vit, images: &[ChwImage], options: &VitOptions, runs: usize) -> Result<(Matrix, f64)> {
    let (logits, seconds) = predict_logits(vit, images, options, runs)?;
    Ok((softmax_rows(&logits), seconds))
}

/// The logits `[B x K]` of `runs` forwards (the last one's) and the median seconds per forward.
pub fn predict_logits(vit: &Vit, images: &[ChwImage], options: &VitOptions, runs: usize) -> Result<(Matrix, f64)> {
    let mut times = Vec::with_capacity(runs.max(1));
    let mut logits = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        logits = Some(vit.forward_with(images, options)?.logits);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let logits = logits.ok_or_else(|| Error::invalid("predict", "no run"))?;
    Ok((logits, times[times.len() / 2]))
}

/// A sparse graph's predictions against the complete graph's, with the same weights.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Fraction of inputs whose top-1 class is the same.
    pub top1_agreement: f64,
    /// Mean over inputs of `KL(p_complete || p_sparse)` in nats.
    pub mean_kl: f64,
    /// Median seconds per forward on the complete graph.
    pub complete_seconds: f64,
    /// Median seconds per forward on the sparse graph.
    pub sparse_seconds: f64,
    /// `complete_seconds / sparse_seconds`.
    pub speedup: f64,
}

/// Compares two prediction matrices `[B x K]` and their timings.
pub fn compare(complete: &Matrix, sparse: &Matrix, complete_seconds: f64, sparse_seconds: f64) -> Comparison {
    let b = complete.rows().max(1);
    let agree =
        (0..complete.rows()).filter(|&i| top_k(complete.row(i), 1)[0].0 == top_k(sparse.row(i), 1)[0].0).count();
    let kl: f64 = (0..complete.rows()).map(|i| kl_divergence(complete.row(i), sparse.row(i))).sum();
    Comparison {
        top1_agreement: agree as f64 / b as f64,
        mean_kl: kl / b as f64,
        complete_seconds,
        sparse_seconds,
        speedup: complete_seconds / sparse_seconds.max(f64::MIN_POSITIVE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_equal_distributions_is_zero_and_known_value() {
        let p = [0.5, 0.5];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3)
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&p, &[0.25, 0.75]) - want).abs() < 1e-7);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.1, 0.4, 0.4, 0.1], 3), vec![(1, 0.4), (2, 0.4), (0, 0.1)]);
        assert_eq!(top_k(&[0.3], 5).len(), 1);
    }

    #[test]
    fn comparison_counts_agreement() {
        let a = Matrix::from_vec(2, 2, vec![0.9, 0.1, 0.2, 0.8]).unwrap();
        let b = Matrix::from_vec(2, 2, vec![0.6, 0.4, 0.7, 0.3]).unwrap();
        let c = compare(&a, &b, 2.0, 1.0);
        assert_eq!((c.top1_agreement, c.speedup), (0.5, 2.0));
        assert!(c.mean_kl > 0.0);
        assert_eq!(compare(&a, &a, 1.0, 1.0).mean_kl, 0.0);
    }

    #[test]
    fn bundled_labels_have_1000_lines() {
        let labels = load_labels(None, 1000).unwrap().unwrap();
        assert_eq!(labels[285], "Egyptian cat");
        assert!(load_labels(None, 10).unwrap().is_none());
    }
}

/// A ViT with the preprocessing its inputs need, for pictures (`patchgraph attention`,
/// `patchgraph graph --checkpoint`): the image as the model sees it, before normalisation (for
/// drawing), and normalised (for the model).
#[derive(Clone, Debug)]
pub struct PreparedVit {
    /// The model.
    pub vit: Vit,
    /// Decode, resize and crop to the model's input (no normalisation).
    pub transform: ImageTransform,
    /// The normalisation applied before the model.
    pub normalization: Normalization,
    /// What loading adapted (class count, resampled position embedding), one line each.
    pub adapted: Vec<String>,
}

impl PreparedVit {
    /// Loads a checkpoint. One written by `patchgraph train` carries its model config and its
    /// training normalisation in the metadata: inputs are resized to the model's size (gray for
    /// one channel) and normalised as in training. Any other checkpoint (timm, Google) needs
    /// `config`, and inputs go through timm's eval transform (crop 0.875) with `normalization`.
    pub fn load(path: impl AsRef<Path>, config: Option<VitConfig>, normalization: Normalization) -> Result<Self> {
        Self::load_with(path, config, normalization, false)
    }

    /// [`PreparedVit::load`], with `allow_nonfinite` as for [`load_checkpoint_with`].
    pub fn load_with(
        path: impl AsRef<Path>,
        config: Option<VitConfig>,
        normalization: Normalization,
        allow_nonfinite: bool,
    ) -> Result<Self> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let (map, mut notes) = load_checkpoint_noted(path, allow_nonfinite)?;
        let (map, layout) = crate::checkpoint::to_timm_vit(map)?;
        notes.extend(layout);
        let saved: Option<VitConfig> =
            map.metadata().get("patchgraph_vit_config").and_then(|s| serde_json::from_str(s).ok());
        let trained: Option<crate::train::TrainConfig> =
            map.metadata().get("patchgraph_train_config").and_then(|s| serde_json::from_str(s).ok());
        let config = match (config, saved) {
            (Some(c), _) | (None, Some(c)) => c,
            (None, None) => {
                return Err(Error::invalid(
                    "ViT checkpoint",
                    format!("{what} carries no model config: give --config FILE or --arch NAME"),
                ));
            }
        };
        let size = config.img_size;
        let (transform, normalization) = match trained {
            Some(t) => (
                ImageTransform {
                    channels: if config.in_chans == 1 {
                        crate::image::Channels::Gray
                    } else {
                        crate::image::Channels::Rgb
                    },
                    resize: Some(crate::image::ResizeTo::Exact { height: size.h, width: size.w }),
                    interpolation: Interpolation::Bilinear,
                    crop: None,
                    normalize: None,
                },
                Normalization { mean: t.mean, std: t.std },
            ),
            None => {
                let pre = Preprocess {
                    img_size: size,
                    in_chans: config.in_chans,
                    crop_pct: 0.875,
                    interpolation: Interpolation::Bicubic,
                    normalization,
                };
                let mut t = pre.transform();
                let normalization = t.normalize.take().unwrap_or_else(|| pre.normalization.clone());
                (t, normalization)
            }
        };
        let (vit, adapted) = Vit::load_adapting(config, map, &what)?;
        notes.extend(adapted);
        Ok(PreparedVit { vit, transform, normalization, adapted: notes })
    }

    /// `(display, input)`: an image file as the model sees it, in `[0, 1]`, and normalised.
    pub fn prepare_path(&self, path: impl AsRef<Path>) -> Result<(ChwImage, ChwImage)> {
        let display = self.transform.apply_path(path)?;
        self.prepare(display)
    }

    /// `(display, input)` from an image already at the model's size, in `[0, 1]`.
    pub fn prepare(&self, display: ChwImage) -> Result<(ChwImage, ChwImage)> {
        let input = self.normalization.apply(&display)?;
        Ok((display, input))
    }
}
