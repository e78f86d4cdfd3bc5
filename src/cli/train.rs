//! `patchgraph train`: one of three model families (a ViT with its attention on any graph, a
//! GAT / GATv2 network on the patch graph, a ViG) on MNIST-format, CIFAR-10 or image-folder
//! data, with metrics, curves, checkpoints and the optimiser state written every epoch
//! (whole or not at all) and `--resume`. The epoch lines go through [`super::Log`]; the report
//! holds every epoch's metrics.

use super::{Common, Log};
use crate::atomic_file::{write_all_atomically, write_atomically};
use crate::checkpoint::TensorMap;
use crate::data::{ImageDataset, Split, load_dataset};
use crate::error::{Error, Result};
use crate::graph::GraphSpec;
use crate::nn::{Classifier, GlobalPool, Init, PatchGat, PatchGatConfig, Vig, VigConfig, Vit, VitConfig};
use crate::train::{AdamW, BatchProgress, EpochMetrics, TrainConfig, train};
use crate::viz::{load_training_metrics, plot_training};
use std::fmt;
use std::path::{Path, PathBuf};

/// The flags of `patchgraph train`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Dataset directory: IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (MNIST,
    /// Fashion-MNIST), CIFAR-10 binary batches (cifar-10-batches-bin), or an image folder with
    /// train/ and test/ (or val/) sub-folders of one folder per class.
    #[arg(long)]
    pub data: PathBuf,
    /// Image folders: resize every image to SIZE x SIZE (default 32).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Image folders: 1 (gray) or 3 (RGB, default) channels.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Model family: vit (timm's ViT, attention on --graph), gat / gatv2 (GAT layers on the
    /// patch graph, mean-pooled) or vig (Grapher with feature k-NN and max-relative messages).
    #[arg(long, default_value = "vit")]
    pub model: String,
    /// Graph, one spec or one per layer, comma-separated (complete, grid8:1, window:7, knn:8,
    /// fknn:8:1, bigbird:3:2:0, swin:7, lsh:8:2:0, window:7+global+random:3 ...), or for vit a
    /// low-rank method in every layer, trained with the model (performer:M:SEED, linformer:K,
    /// nystrom:L). swin:M also gives the ViT Swin's relative position bias. Default: complete for vit, grid8:1 for gat, dilated cosine feature
    /// k-NN (k = --k) for vig.
    #[arg(long)]
    pub graph: Option<String>,
    /// ViG: neighbours per node of its default feature k-NN graphs.
    #[arg(long, default_value_t = 6)]
    pub k: usize,
    /// ViG: largest dilation of its default graphs (reached in the last layers).
    #[arg(long, default_value_t = 2)]
    pub max_dilation: usize,
    /// Patch side in pixels.
    #[arg(long, default_value_t = 4)]
    pub patch: usize,
    /// Width D.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (AdamW, warm-up 1 epoch, cosine to 1e-5).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Weight decay (weight matrices only).
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f32,
    /// Seed of the initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pooling before the head: token (class token) or avg (mean of the patch tokens).
    #[arg(long, default_value = "token")]
    pub pool: String,
    /// Random-crop augmentation: zero padding in pixels (0: none).
    #[arg(long, default_value_t = 2)]
    pub pad_crop: usize,
    /// Random horizontal flips (off for digits).
    #[arg(long)]
    pub flip: bool,
    /// Warm-up length in epochs.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f32,
    /// Use only the first N training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output directory: metrics.csv, metrics.json, checkpoint.safetensors (timm names), optimizer.safetensors.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the checkpoint and optimiser state in --out (give the same arguments, with
    /// the same --epochs: the schedule spans them).
    #[arg(long)]
    pub resume: bool,
}

/// What `patchgraph train` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The model, in words.
    pub model: String,
    /// Every epoch's metrics, resumed epochs included.
    pub metrics: Vec<EpochMetrics>,
    /// Test images.
    pub test_images: usize,
    /// The output directory, if any.
    pub out: Option<PathBuf>,
}

/// The model family `patchgraph train` builds.
enum Family {
    Vit(Box<VitConfig>),
    Gat(PatchGatConfig),
    Vig(VigConfig),
}

/// Trains as the flags say. `log` receives the run's description and one line per epoch;
/// `progress_bar` draws a bar of the batches (the command line's; off for a library caller).
///
/// Errors: every flag is checked before anything is written (an unknown `--model` or
/// `--pool`, `--epochs 0`, a negative `--lr`, ...); the data's and `--resume`'s errors.
pub fn run(args: &Args, common: &Common, log: &mut Log<'_>, progress_bar: bool) -> Result<Report> {
    let graphs = match &args.graph {
        Some(g) => super::parse_graphs(g)?,
        None => Vec::new(),
    };
    let size = args.image_size.map(|s| (s, s));
    let train_set = load_dataset(&args.data, Split::Train, size, args.channels)?;
    let test_set = load_dataset(&args.data, Split::Test, size, args.channels)?;
    let (c, h, w) = train_set.shape();
    if test_set.shape() != (c, h, w) {
        return Err(Error::shape(
            "test images",
            format!("{:?} like the training images", (c, h, w)),
            format!("{:?}", test_set.shape()),
        ));
    }
    // one channel: MNIST's statistics (Fashion-MNIST's are close); otherwise the training set's own
    let (mean, std) = if c == 1 { (vec![0.1307], vec![0.3081]) } else { channel_stats(&train_set) };
    let classes = train_set.classes.max(test_set.classes);
    let (patch, dim, depth, heads) = (args.patch, args.dim, args.depth, args.heads);
    let family = match args.model.as_str() {
        "vit" => {
            if h != w {
                return Err(Error::invalid("--model vit", format!("needs square images, the data are {h} x {w}")));
            }
            let mut vit_config = VitConfig::tiny(h, patch, classes);
            (vit_config.in_chans, vit_config.embed_dim, vit_config.depth, vit_config.num_heads) =
                (c, dim, depth, heads);
            vit_config.global_pool = match args.pool.as_str() {
                "token" => GlobalPool::Token,
                "avg" => GlobalPool::Avg,
                other => return Err(Error::invalid("--pool", format!("`{other}`: expected token or avg"))),
            };
            // A low-rank method's parameters (Linformer's E, F; Nyström's conv; Performer's
            // projection) and Swin's relative position table are part of the model.
            let lows: Vec<_> = graphs
                .iter()
                .filter_map(|g| match g {
                    GraphSpec::LowRank(m) => Some(m.clone()),
                    _ => None,
                })
                .collect();
            if let Some(m) = lows.first() {
                if lows.len() != graphs.len() || lows.iter().any(|x| x != m) {
                    return Err(Error::invalid(
                        "--graph",
                        format!(
                            "a ViT trains one low-rank method in every layer; got `{}`",
                            args.graph.as_deref().unwrap_or("")
                        ),
                    ));
                }
                vit_config.attention = Some(m.clone());
            }
            if let Some(GraphSpec::Swin { size, .. }) = graphs.first() {
                let (gh, gw) = vit_config.grid_size();
                vit_config.relative_position_bias = Some((*size).min(gh.min(gw)));
            }
            Family::Vit(Box::new(vit_config))
        }
        "gat" | "gatv2" => Family::Gat(PatchGatConfig {
            image: (c, h, w),
            patch,
            dim,
            depth,
            heads,
            num_classes: classes,
            v2: args.model == "gatv2",
            ..PatchGatConfig::mnist()
        }),
        "vig" => Family::Vig(VigConfig {
            image: (c, h, w),
            patch,
            dim,
            depth,
            num_classes: classes,
            k: args.k,
            max_dilation: args.max_dilation,
            ..VigConfig::mnist()
        }),
        other => return Err(Error::invalid("--model", format!("`{other}`: expected vit, gat, gatv2 or vig"))),
    };
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        smoothing: args.smoothing,
        seed: args.seed,
        limit: args.limit,
        graphs,
        pad_crop: args.pad_crop,
        flip: args.flip,
        warmup_epochs: args.warmup,
        mean,
        std,
        ..TrainConfig::mnist()
    };
    // Every flag is checked before anything is written.
    config.validate()?;
    let job = Job {
        config,
        train_set: &train_set,
        test_set: &test_set,
        out: args.out.as_deref(),
        resume: args.resume,
        allow_nonfinite: common.allow_nonfinite,
        progress_bar,
    };
    let (describe, metrics) = match family {
        Family::Vit(vc) => {
            vc.validate()?;
            let model = Vit::new(*vc, &mut Init::new(job.config.seed))?;
            let text = format!("ViT D={dim} depth={depth} heads={heads} patch={patch}");
            let metrics = job.run(model, &text, "patchgraph_vit_config", Vit::load, log)?;
            (text, metrics)
        }
        Family::Gat(gc) => {
            let model = PatchGat::new(gc, &mut Init::new(job.config.seed))?;
            let name = if model.config().v2 { "GATv2" } else { "GAT" };
            let text = format!("{name} D={dim} depth={depth} heads={heads} patch={patch}");
            let metrics = job.run(model, &text, "patchgraph_patch_gat_config", PatchGat::load, log)?;
            (text, metrics)
        }
        Family::Vig(vc) => {
            let model = Vig::new(vc, &mut Init::new(job.config.seed))?;
            let text =
                format!("ViG D={dim} depth={depth} patch={patch} k={} max dilation {}", args.k, args.max_dilation);
            let metrics = job.run(model, &text, "patchgraph_vig_config", Vig::load, log)?;
            (text, metrics)
        }
    };
    Ok(Report { model: describe, metrics, test_images: test_set.len(), out: args.out.clone() })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.out {
            writeln!(
                f,
                "wrote {}/{{metrics.csv, metrics.json, curves.png, checkpoint.safetensors, optimizer.safetensors}}",
                dir.display()
            )?;
        }
        if let Some(last) = self.metrics.last() {
            writeln!(
                f,
                "test accuracy {:.4} ({} of {} images)",
                last.test_accuracy,
                (last.test_accuracy * self.test_images as f32).round(),
                self.test_images
            )?;
        }
        Ok(())
    }
}

/// Per-channel mean and standard deviation of a dataset's pixels (f64 sums).
fn channel_stats(data: &ImageDataset) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = data.shape();
    let (mut sum, mut sq) = (vec![0.0f64; c], vec![0.0f64; c]);
    for i in 0..data.len() {
        if let Ok((image, _)) = data.get(i) {
            for (ch, plane) in image.as_slice().chunks(h * w).enumerate() {
                for &v in plane {
                    sum[ch] += v as f64;
                    sq[ch] += (v as f64) * (v as f64);
                }
            }
        }
    }
    let n = (data.len() * h * w).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum.iter().zip(&sq).map(|(s, q)| ((q / n - (s / n).powi(2)).max(1e-12).sqrt()) as f32).collect();
    (mean, std)
}

/// The model config stored under `key` in a checkpoint's metadata.
fn saved_config<C: serde::de::DeserializeOwned>(map: &TensorMap, key: &str, what: &str) -> Result<C> {
    map.metadata().get(key).and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| Error::Format {
        path: what.to_string(),
        reason: format!("no `{key}` model config in its metadata (was it written by another --model?)"),
    })
}

/// What one training run works on, whatever the model.
struct Job<'a> {
    config: TrainConfig,
    train_set: &'a ImageDataset,
    test_set: &'a ImageDataset,
    out: Option<&'a Path>,
    resume: bool,
    allow_nonfinite: bool,
    progress_bar: bool,
}

impl Job<'_> {
    /// The loop with metrics files and checkpoints: the checkpoint holds the model config under
    /// `config_key`, read back and given to `load` on `--resume`.
    fn run<M: Classifier, C: serde::de::DeserializeOwned>(
        self,
        model: M,
        describe: &str,
        config_key: &str,
        load: fn(C, TensorMap, &str) -> Result<M>,
        log: &mut Log<'_>,
    ) -> Result<Vec<EpochMetrics>> {
        run_training(
            model,
            describe,
            self,
            config_key,
            &|map, what| load(saved_config(&map, config_key, what)?, map, what),
            log,
        )
    }
}

/// The metadata key of the epoch count a checkpoint and an optimiser state were saved after.
const EPOCH_KEY: &str = "patchgraph_epoch";

/// The epoch count saved in `map`'s metadata (`fallback` for files written before it was).
fn saved_epoch(map: &TensorMap, fallback: usize, what: &str) -> Result<usize> {
    match map.metadata().get(EPOCH_KEY) {
        None => Ok(fallback),
        Some(v) => v.parse().map_err(|_| Error::Format {
            path: what.to_string(),
            reason: format!("`{EPOCH_KEY}` metadata `{v}` is not an epoch count"),
        }),
    }
}

/// One training run (see [`Job::run`]).
///
/// With `--out`, every epoch ends by writing `metrics.json`, `metrics.csv` and `curves.png`,
/// then the optimiser state and the checkpoint together (both written to temporary files,
/// then renamed): a run killed at any point leaves whole files of the last finished epoch,
/// and `--resume` continues from the checkpoint's epoch (metrics of a later epoch, written
/// before a kill, are dropped and recomputed). Returns every epoch's metrics.
fn run_training<M: Classifier>(
    mut model: M,
    describe: &str,
    job: Job<'_>,
    config_key: &str,
    load: &dyn Fn(TensorMap, &str) -> Result<M>,
    log: &mut Log<'_>,
) -> Result<Vec<EpochMetrics>> {
    let Job { config, train_set, test_set, out, resume, allow_nonfinite, progress_bar } = job;
    let mut opt = AdamW::new(config.lr, config.weight_decay);
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        if resume {
            let metrics = dir.join("metrics.json");
            let text =
                std::fs::read_to_string(&metrics).map_err(|source| Error::Io { path: metrics.clone(), source })?;
            history = serde_json::from_str(&text)
                .map_err(|e| Error::Format { path: metrics.display().to_string(), reason: e.to_string() })?;
            let ckpt = dir.join("checkpoint.safetensors");
            let what = ckpt.display().to_string();
            let mut map = TensorMap::load_safetensors(&ckpt)?;
            map.set_allow_nonfinite(allow_nonfinite);
            let epoch = saved_epoch(&map, history.len(), &what)?;
            model = load(map, &what)?;
            let opt_path = dir.join("optimizer.safetensors");
            let opt_what = opt_path.display().to_string();
            let mut state = TensorMap::load_safetensors(&opt_path)?;
            state.set_allow_nonfinite(allow_nonfinite);
            let opt_epoch = saved_epoch(&state, history.len(), &opt_what)?;
            if opt_epoch != epoch {
                return Err(Error::invalid(
                    "--resume",
                    format!(
                        "{what} is from epoch {epoch} but {opt_what} from epoch {opt_epoch}: they are not one run's"
                    ),
                ));
            }
            if history.len() < epoch {
                return Err(Error::invalid(
                    "--resume",
                    format!("{} holds {} epochs, the checkpoint {epoch}", metrics.display(), history.len()),
                ));
            }
            history.truncate(epoch);
            opt.load_state(state, &opt_what)?;
            log(&format!("resuming after epoch {epoch} (step {})", opt.steps()));
        }
    }
    let resumed: Vec<EpochMetrics> = history
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Format { path: "metrics.json".into(), reason: e.to_string() })?;
    let start_epoch = history.len();
    log(&format!(
        "train: {describe} on {} images ({} test), graph {}, {} rayon threads",
        config.limit.map_or(train_set.len(), |l| l.min(train_set.len())),
        test_set.len(),
        if config.graphs.is_empty() {
            "the model's default".to_string()
        } else {
            config.graphs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        },
        rayon::current_num_threads()
    ));
    let bar = if progress_bar { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| Error::invalid("progress bar", e.to_string()))?
            .progress_chars("=> "),
    );
    let mut on_batch = |p: BatchProgress| {
        bar.set_length(p.batches as u64);
        bar.set_prefix(p.epoch.to_string());
        bar.set_position(p.batch as u64);
        bar.set_message(format!("loss {:.4} acc {:.3} {:.0} img/s", p.loss, p.accuracy, p.images_per_second));
    };
    let train_config = serde_json::to_string(&config).map_err(|e| Error::invalid("train config", e.to_string()))?;
    let mut on_epoch = |m: &EpochMetrics, model: &M, opt: &AdamW| -> Result<()> {
        bar.suspend(|| {
            log(&format!(
                "epoch {:>3}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | lr {:.2e} | {:.0} img/s, {:.1} s",
                m.epoch, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy, m.lr, m.images_per_second, m.seconds
            ))
        });
        let Some(dir) = out else { return Ok(()) };
        history.push(serde_json::to_value(m).map_err(|e| Error::invalid("metrics", e.to_string()))?);
        write_metrics(dir, &history)?;
        // loss and accuracy curves so far, redrawn every epoch
        let points = load_training_metrics(&dir.join("metrics.json"))?;
        plot_training(&[(describe.to_string(), points)], describe, &dir.join("curves.png"))?;
        let mut map = model.state_dict()?;
        map.set_metadata("format", "pt");
        // the data handling (normalisation, graphs) so that other commands can prepare inputs alike
        map.set_metadata("patchgraph_train_config", train_config.clone());
        map.set_metadata(EPOCH_KEY, m.epoch.to_string());
        if !map.metadata().contains_key(config_key) {
            return Err(Error::invalid("checkpoint", format!("the model did not record `{config_key}`")));
        }
        let mut state = opt.state_dict()?;
        state.set_metadata(EPOCH_KEY, m.epoch.to_string());
        let (ckpt, opt_bytes) = (map.to_safetensors_bytes()?, state.to_safetensors_bytes()?);
        write_all_atomically(&[
            (&dir.join("optimizer.safetensors"), &opt_bytes),
            (&dir.join("checkpoint.safetensors"), &ckpt),
        ])
    };
    let metrics = train(&mut model, &mut opt, train_set, test_set, &config, start_epoch, &mut on_batch, &mut on_epoch)?;
    bar.finish_and_clear();
    Ok(resumed.into_iter().chain(metrics).collect())
}

/// metrics.json (every epoch) and metrics.csv, each written whole through a rename.
fn write_metrics(dir: &Path, history: &[serde_json::Value]) -> Result<()> {
    let json = serde_json::to_string_pretty(history).map_err(|e| Error::invalid("metrics", e.to_string()))?;
    write_atomically(&dir.join("metrics.json"), json.as_bytes())?;
    let cols =
        ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "images_per_second", "seconds"];
    let mut csv = cols.join(",") + "\n";
    for row in history {
        csv += &cols.iter().map(|c| row[c].to_string()).collect::<Vec<_>>().join(",");
        csv += "\n";
    }
    write_atomically(&dir.join("metrics.csv"), csv.as_bytes())
}
