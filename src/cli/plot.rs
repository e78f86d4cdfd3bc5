//! `patchgraph plot`: benchmark records against the peers' (time against N and against k, log
//! scales, the crossover marked) or training curves (loss and accuracy per epoch, several runs
//! overlaid).

use super::wrote;
use crate::error::{Error, Result};
use crate::viz::{load_patchgraph_bench, load_peer_bench, load_training_metrics, plot_bench, plot_training};
use std::fmt;
use std::path::{Path, PathBuf};

/// The flags of `patchgraph plot`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A `patchgraph bench --json` file.
    #[arg(long)]
    pub bench: Option<PathBuf>,
    /// A `scripts/bench_peers.py --json` file to plot beside it.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// `metrics.json` files of training runs (repeat the flag; each run is labelled by its directory).
    #[arg(long)]
    pub metrics: Vec<PathBuf>,
    /// Title of a training plot.
    #[arg(long, default_value = "training")]
    pub title: String,
    /// Output picture (.png or .svg).
    #[arg(long)]
    pub out: PathBuf,
}

/// The picture written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The picture.
    pub wrote: Vec<PathBuf>,
}

/// Draws `--bench` (with `--peers`) or the `--metrics` runs into `--out`.
pub fn run(args: &Args) -> Result<Report> {
    match (&args.bench, args.metrics.is_empty()) {
        (Some(bench), true) => bench_files(bench, args.peers.as_deref(), &args.out)?,
        (None, false) => {
            let runs = args
                .metrics
                .iter()
                .map(|m| {
                    let label = m
                        .parent()
                        .and_then(|d| d.file_name())
                        .map_or_else(|| m.display().to_string(), |n| n.to_string_lossy().into_owned());
                    Ok((label, load_training_metrics(m)?))
                })
                .collect::<Result<Vec<_>>>()?;
            plot_training(&runs, &args.title, &args.out)?;
        }
        _ => return Err(Error::invalid("plot", "give --bench FILE (with --peers FILE) or one or more --metrics FILE")),
    }
    Ok(Report { wrote: vec![args.out.clone()] })
}

/// Our sweep (`patchgraph bench --json`) and, if given, the peers' timings, in one picture.
pub fn bench_files(bench: &Path, peers: Option<&Path>, out: &Path) -> Result<()> {
    let ours = load_patchgraph_bench(bench)?;
    let mut points = ours.points.clone();
    if let Some(p) = peers {
        points.extend(load_peer_bench(p)?);
    }
    plot_bench(&points, ours.crossover_density(), out)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        wrote(f, &self.wrote)
    }
}
