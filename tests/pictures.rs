//! The picture commands end to end: `patchgraph graph --out`, `patchgraph attention`,
//! `patchgraph plot`, and the curves `patchgraph train` draws. The pictures' content (which
//! pixels an edge or a heat map changes) is checked in tests/viz.rs; here: the commands write
//! the documented picture, the same inputs give the same bytes, and bad arguments are errors.

use patchgraph::nn::{Init, Vit, VitConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patchgraph")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-pictures-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap();
    (img.width(), img.height())
}

#[test]
fn graph_pictures() {
    let photo = format!("{}/data/images/chelsea.png", root());
    let (a, b) = (temp("graph-a.png"), temp("graph-b.png"));
    for out in [&a, &b] {
        let (ok, stdout, stderr) = run(&[
            "graph",
            &photo,
            "--patch",
            "32",
            "--graph",
            "fknn:6:2",
            "--class-token",
            "--node",
            "9",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("wrote"), "{stdout}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same inputs, different bytes");
    let (w, h) = png_size(&a);
    assert!(w >= 448 && h >= 448, "{w} x {h}");
    // every edge and SVG
    let svg = temp("graph.svg");
    let (ok, _, stderr) =
        run(&["graph", &photo, "--patch", "32", "--graph", "grid8:1", "--all", "--out", svg.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    // a node out of range and an unknown extension are errors
    let (ok, _, stderr) =
        run(&["graph", &photo, "--patch", "32", "--node", "999", "--out", temp("x.png").to_str().unwrap()]);
    assert!(!ok && stderr.contains("999"), "{stderr}");
    let (ok, _, stderr) = run(&["graph", &photo, "--patch", "32", "--out", temp("x.bmp").to_str().unwrap()]);
    assert!(!ok && stderr.contains("bmp"), "{stderr}");
}

/// A tiny random ViT saved as a checkpoint; its layer-1 features build the k-NN of `graph
/// --checkpoint`, and `attention` draws its class-token attention, rollout and a query patch.
#[test]
fn attention_and_feature_graph_pictures() {
    let mut c = VitConfig::tiny(64, 16, 5);
    (c.embed_dim, c.depth, c.num_heads) = (16, 2, 2);
    let vit = Vit::new(c, &mut Init::new(1)).unwrap();
    let ckpt = temp("tiny.safetensors");
    vit.save_safetensors(&ckpt).unwrap();
    let ckpt = ckpt.to_str().unwrap();
    let photo = format!("{}/data/images/astronaut.png", root());
    let (a, b) = (temp("attn-a.png"), temp("attn-b.png"));
    for out in [&a, &b] {
        let (ok, stdout, stderr) =
            run(&["attention", "--checkpoint", ckpt, &photo, "--rollout", "--out", out.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("rollout of the class token"), "{stdout}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let q = temp("attn-q.png");
    let (ok, stdout, stderr) = run(&[
        "attention",
        "--checkpoint",
        ckpt,
        &photo,
        "--layer",
        "0",
        "--head",
        "1",
        "--query",
        "5",
        "--graph",
        "knn:4",
        "--out",
        q.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("patch 5") && stdout.contains("head 1"), "{stdout}");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&q).unwrap());
    for (bad, needle) in [(["--layer", "2"], "layer"), (["--query", "16"], "patch 16"), (["--head", "2"], "head")] {
        let mut args = vec!["attention", "--checkpoint", ckpt, &photo, "--out", "x.png"];
        args.extend(bad);
        let (ok, _, stderr) = run(&args);
        assert!(!ok && stderr.contains(needle), "{bad:?}: {stderr}");
    }
    // the graph of layer 1's features
    let g = temp("feature-graph.png");
    let (ok, stdout, stderr) = run(&[
        "graph",
        &photo,
        "--checkpoint",
        ckpt,
        "--layer",
        "1",
        "--graph",
        "fknn:3:1",
        "--node",
        "4",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("features: layer 1"), "{stdout}");
}

#[test]
fn plots_from_files() {
    let out = temp("bench.png");
    let (ok, _, stderr) = run(&[
        "plot",
        "--bench",
        &format!("{}/notes/data/bench-2026-11-26-patchgraph.json", root()),
        "--peers",
        &format!("{}/notes/data/bench-2026-11-26-peers.json", root()),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(png_size(&out).0 > 0);
    let (ok, _, stderr) = run(&["plot", "--out", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("--bench"), "{stderr}");
}

/// `train --out` redraws curves.png every epoch; `plot --metrics` overlays runs.
#[test]
fn training_curves() {
    let dir = temp("run");
    let (ok, _, stderr) = run(&[
        "train",
        "--data",
        &format!("{}/data/mnist5k", root()),
        "--patch",
        "7",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--limit",
        "128",
        "--epochs",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(png_size(&dir.join("curves.png")).0 > 0);
    let out = temp("curves.png");
    let metrics = dir.join("metrics.json");
    let (ok, _, stderr) = run(&[
        "plot",
        "--metrics",
        metrics.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
}
