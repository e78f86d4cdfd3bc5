//! `patchgraph embed`: a tiny random ViT and three generated PNGs (the output equals the model's
//! own forward on the same inputs; the safetensors file's normalised rows and file list), the
//! complete-graph comparison, the errors that write nothing, and the CLIP fixture on the
//! bundled photographs.

use clap::Parser;
use patchgraph::checkpoint::{TensorMap, read_npy};
use patchgraph::cli::{Common, embed};
use patchgraph::image::{Interpolation, Normalization};
use patchgraph::infer::{Preprocess, load_inputs, load_vit};
use patchgraph::nn::{Init, Size2, Vit, VitConfig, VitOptions};
use patchgraph::{Error, Matrix};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A fresh directory for one test.
fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-embed-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The command's flags as the command line spells them.
fn args(argv: &[&str]) -> embed::Args {
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: embed::Args,
    }
    Cmd::try_parse_from(std::iter::once("embed").chain(argv.iter().copied())).unwrap().args
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small random ViT (32 x 32 input, 8 x 8 patches: a 4 x 4 grid) with `classes` outputs
/// (0: headless), saved as safetensors; returns the model and the checkpoint.
fn tiny_vit(dir: &Path, classes: usize) -> (Vit, PathBuf) {
    let mut c = VitConfig::tiny(32, 8, classes);
    (c.embed_dim, c.depth, c.num_heads) = (16, 2, 2);
    let vit = Vit::new(c, &mut Init::new(7)).unwrap();
    let path = dir.join(format!("tiny{classes}.safetensors"));
    vit.save_safetensors(&path).unwrap();
    (vit, path)
}

/// Three PNGs of different sizes and contents, written out of name order, beside a text file and
/// a subdirectory holding another image (neither is an input); returns the images' paths in
/// name order.
fn images(dir: &Path) -> Vec<PathBuf> {
    let names = ["b.png", "c.png", "a.png"];
    for (k, name) in names.iter().enumerate() {
        let (w, h) = (40 + 9 * k as u32, 36 + 5 * k as u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let k = k as u32;
            image::Rgb([
                ((x * (7 + 13 * k) + y * 3) % 256) as u8,
                ((y * (11 + 5 * k) + x * x) % 256) as u8,
                (((x + 2 * y) * (k + 1) * 17) % 256) as u8,
            ])
        });
        img.save(dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    image::RgbImage::from_pixel(33, 33, image::Rgb([9, 9, 9])).save(dir.join("sub/d.png")).unwrap();
    ["a.png", "b.png", "c.png"].iter().map(|n| dir.join(n)).collect()
}

/// What `embed` does to an image with `--crop-pct 0.875 --norm inception`, spelled out.
fn preprocess(img_size: usize) -> Preprocess {
    Preprocess {
        img_size: Size2::square(img_size),
        in_chans: 3,
        crop_pct: 0.875,
        interpolation: Interpolation::Bicubic,
        normalization: Normalization::inception(),
    }
}

/// The model's own output on the images (one batch).
fn forward(vit: &Vit, files: &[PathBuf], pre: &Preprocess, options: &VitOptions) -> Matrix {
    let inputs = load_inputs(files, pre).unwrap();
    let images: Vec<_> = inputs.into_iter().map(|i| i.image).collect();
    vit.forward_with(&images, options).unwrap().logits
}

fn norm(row: &[f32]) -> f64 {
    row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

/// The files in `dir`, names only, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn npy_rows_are_the_models_forward_on_the_same_inputs() {
    let dir = temp("npy");
    let (vit, ckpt) = tiny_vit(&dir, 10);
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let files = images(&imgs);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(vit.config()).unwrap()).unwrap();
    let want = forward(&vit, &files, &preprocess(32), &VitOptions::default());
    assert_eq!((want.rows(), want.cols()), (3, 10));

    let out = dir.join("e.npy");
    let r = embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&imgs), "--out", s(&out)]),
        &Common::default(),
    )
    .unwrap();
    assert_eq!(r.embedding_width, 10);
    assert_eq!(r.files, files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>());
    let t = read_npy(&std::fs::read(&out).unwrap(), "e.npy").unwrap();
    assert_eq!(t.shape, vec![3, 10]);
    assert_eq!(t.data, want.as_slice(), "the output is not the model's forward");

    // --normalize: the same rows, each divided by its norm; --batch 2 (two forwards) does not change them
    let out_n = dir.join("n.npy");
    let argv = ["--checkpoint", s(&ckpt), "--config", s(&config), s(&imgs), "--out", s(&out_n), "--normalize"];
    let r = embed::run(&args(&[&argv[..], &["--batch", "2"]].concat()), &Common::default()).unwrap();
    assert!(r.normalized);
    let t = read_npy(&std::fs::read(&out_n).unwrap(), "n.npy").unwrap();
    assert_eq!(t.shape, vec![3, 10]);
    for i in 0..3 {
        let (row, raw) = (&t.data[10 * i..10 * (i + 1)], want.row(i));
        assert!((norm(row) - 1.0).abs() < 1e-6, "row {i} has norm {}", norm(row));
        let n = norm(raw);
        for (a, b) in row.iter().zip(raw) {
            assert!((*a as f64 - *b as f64 / n).abs() < 1e-5, "row {i}: {a} vs {}", *b as f64 / n);
        }
    }
    // a list of files in another order keeps that order
    let out_l = dir.join("l.npy");
    let listed = [s(&files[2]), s(&files[0])];
    let argv = ["--checkpoint", s(&ckpt), "--config", s(&config), "--out", s(&out_l)];
    let r = embed::run(&args(&[&argv[..], &listed[..]].concat()), &Common::default()).unwrap();
    assert_eq!(r.files, vec![files[2].display().to_string(), files[0].display().to_string()]);
    let t = read_npy(&std::fs::read(&out_l).unwrap(), "l.npy").unwrap();
    assert_eq!(t.shape, vec![2, 10]);
    let want_l = forward(&vit, &[files[2].clone(), files[0].clone()], &preprocess(32), &VitOptions::default());
    assert_eq!(t.data, want_l.as_slice());
}

#[test]
fn headless_model_embeds_its_pooled_features() {
    let dir = temp("headless");
    let (vit, ckpt) = tiny_vit(&dir, 0);
    let files = images(&dir);
    let want = vit
        .forward_with(
            &load_inputs(&files, &preprocess(32)).unwrap().into_iter().map(|i| i.image).collect::<Vec<_>>(),
            &VitOptions::default(),
        )
        .unwrap()
        .pre_logits;
    let out = dir.join("h.npy");
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(vit.config()).unwrap()).unwrap();
    let r = embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&dir), "--out", s(&out)]),
        &Common::default(),
    )
    .unwrap();
    assert_eq!(r.embedding_width, 16);
    let t = read_npy(&std::fs::read(&out).unwrap(), "h.npy").unwrap();
    assert_eq!(t.shape, vec![3, 16]);
    assert_eq!(t.data, want.as_slice());
}

#[test]
fn safetensors_output_has_unit_normalised_rows_and_the_files_in_order() {
    let dir = temp("st");
    let (vit, ckpt) = tiny_vit(&dir, 10);
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let files = images(&imgs);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(vit.config()).unwrap()).unwrap();
    let out = dir.join("e.safetensors");
    embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&imgs), "--out", s(&out), "--batch", "2"]),
        &Common::default(),
    )
    .unwrap();
    let map = TensorMap::load_safetensors(&out).unwrap();
    let e = map.get("embedding").unwrap();
    let n = map.get("embedding_normalized").unwrap();
    assert_eq!((e.shape.clone(), n.shape.clone()), (vec![3, 10], vec![3, 10]));
    let want = forward(&vit, &files, &preprocess(32), &VitOptions::default());
    for i in 0..3 {
        let row = &n.data[10 * i..10 * (i + 1)];
        assert!((norm(row) - 1.0).abs() < 1e-6, "row {i} has norm {}", norm(row));
        // the same direction as the raw embedding, which is the model's forward
        let raw = &e.data[10 * i..10 * (i + 1)];
        for (a, b) in raw.iter().zip(want.row(i)) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "row {i}: {a} vs {b}");
        }
        let dot: f64 = row.iter().zip(raw).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((dot - norm(raw)).abs() < 1e-5 * norm(raw));
    }
    let listed: Vec<String> = serde_json::from_str(&map.metadata()["files"]).unwrap();
    let sorted: Vec<String> = ["a.png", "b.png", "c.png"].iter().map(|n| imgs.join(n).display().to_string()).collect();
    assert_eq!(listed, sorted);
}

#[test]
fn compare_against_the_complete_graph() {
    let dir = temp("compare");
    let (vit, ckpt) = tiny_vit(&dir, 10);
    let files = images(&dir);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(vit.config()).unwrap()).unwrap();
    let base = ["--checkpoint", s(&ckpt), "--config", s(&config), s(&dir), "--compare"];

    let out = dir.join("complete.npy");
    let r = embed::run(&args(&[&base[..], &["--out", s(&out)]].concat()), &Common::default()).unwrap();
    let c = r.compare.expect("--compare reports a comparison");
    assert_eq!(c.cosine.len(), 3);
    for (i, cos) in c.cosine.iter().enumerate() {
        assert!((cos - 1.0).abs() < 1e-6, "image {i}: cosine {cos} on the complete graph itself");
    }
    assert!((c.mean_cosine - 1.0).abs() < 1e-6 && (c.min_cosine - 1.0).abs() < 1e-6);

    let out = dir.join("grid.npy");
    let r = embed::run(&args(&[&base[..], &["--graph", "grid8:1", "--out", s(&out)]].concat()), &Common::default())
        .unwrap();
    let c = r.compare.clone().unwrap();
    assert_eq!(c.cosine.len(), 3);
    assert!(c.cosine.iter().all(|c| (-1.0..=1.0).contains(c)), "{:?}", c.cosine);
    assert!(c.cosine.iter().any(|&c| c < 1.0), "grid8:1 gave the complete graph's embeddings: {:?}", c.cosine);
    // the cosines against the model's own complete-graph and grid8:1 forwards, computed here
    let pre = preprocess(32);
    let complete = forward(&vit, &files, &pre, &VitOptions::default());
    let grid =
        forward(&vit, &files, &pre, &VitOptions { graphs: vec!["grid8:1".parse().unwrap()], ..Default::default() });
    assert_ne!(complete.as_slice(), grid.as_slice());
    for i in 0..3 {
        let dot: f64 = complete.row(i).iter().zip(grid.row(i)).map(|(a, b)| *a as f64 * *b as f64).sum();
        let want = dot / (norm(complete.row(i)) * norm(grid.row(i)));
        assert!((c.cosine[i] - want).abs() < 1e-9, "image {i}: {} vs {want}", c.cosine[i]);
    }
    let mean = c.cosine.iter().sum::<f64>() / 3.0;
    let min = c.cosine.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((c.mean_cosine - mean).abs() < 1e-12 && c.min_cosine == min);
    // the output holds the grid8:1 embeddings
    assert_eq!(read_npy(&std::fs::read(&out).unwrap(), "grid.npy").unwrap().data, grid.as_slice());
    // the report: as JSON, the cosines per image; as text, one line per image
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["compare"]["cosine"].as_array().unwrap().len(), 3);
    assert_eq!(json["embedding_width"], 10);
    let text = r.to_string();
    for f in &files {
        assert!(text.contains(&f.display().to_string()), "{text}");
    }
}

#[test]
fn errors_are_typed_and_write_nothing() {
    let dir = temp("errors");
    let (vit, ckpt) = tiny_vit(&dir, 10);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(vit.config()).unwrap()).unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    images(&imgs);
    let before = listing(&dir);

    // a directory without images
    let out = dir.join("e.npy");
    let err = embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&empty), "--out", s(&out)]),
        &Common::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains(s(&empty)), "{err}");

    // a bad extension, checked before the (missing) checkpoint is read
    let bad = dir.join("e.csv");
    let missing = dir.join("missing.safetensors");
    let err = embed::run(
        &args(&["--checkpoint", s(&missing), "--config", s(&config), s(&imgs), "--out", s(&bad)]),
        &Common::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("--out") && err.to_string().contains("e.csv"), "{err}");

    // an image that does not decode, after two good ones: an error naming it, and no file
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(imgs.join("a.png"), broken.join("a.png")).unwrap();
    std::fs::copy(imgs.join("b.png"), broken.join("b.png")).unwrap();
    std::fs::write(broken.join("c.png"), b"not a png").unwrap();
    let st = dir.join("e.safetensors");
    let err = embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&broken), "--out", s(&st), "--batch", "2"]),
        &Common::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains(s(&broken.join("c.png"))), "{err}");
    // a missing input
    let err = embed::run(
        &args(&["--checkpoint", s(&ckpt), "--config", s(&config), s(&dir.join("nope.png")), "--out", s(&out)]),
        &Common::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("nope.png"), "{err:?}");

    let mut after = listing(&dir);
    after.retain(|n| n != "broken");
    assert_eq!(after, before, "an error left a file behind");
    assert!(!out.exists() && !bad.exists() && !st.exists());
}

/// The CLIP vision tower of the fixtures (a `.pth` of OpenAI's layout, mapped to timm's names) on
/// the bundled photographs: one 32-wide embedding per photograph, as the model computes it.
#[test]
fn clip_fixture_on_the_bundled_photographs() {
    let dir = temp("clip");
    let ckpt = format!("{ROOT}/tests/fixtures/checkpoints/clip_tiny.pth");
    let config = format!("{ROOT}/tests/fixtures/checkpoints/clip_tiny.timm_config.json");
    let photos = format!("{ROOT}/data/images");
    let out = dir.join("clip.safetensors");
    let r = embed::run(
        &args(&[
            "--checkpoint",
            &ckpt,
            "--config",
            &config,
            &photos,
            "--out",
            s(&out),
            "--norm",
            "clip",
            "--crop-pct",
            "1.0",
            "--graph",
            "grid8:1",
            "--compare",
        ]),
        &Common::default(),
    )
    .unwrap();
    let names: Vec<String> = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|n| Path::new(&photos).join(n).display().to_string())
        .collect();
    assert_eq!(r.files, names);
    assert_eq!(r.embedding_width, 32);
    let map = TensorMap::load_safetensors(&out).unwrap();
    let e = map.get("embedding").unwrap();
    assert_eq!(e.shape, vec![4, 32]);
    assert!(e.data.iter().all(|v| v.is_finite()));
    let listed: Vec<String> = serde_json::from_str(&map.metadata()["files"]).unwrap();
    assert_eq!(listed, names);
    let c = r.compare.unwrap();
    assert!(c.cosine.iter().all(|c| (-1.0..=1.0).contains(c)), "{:?}", c.cosine);

    // the same numbers as the tower loaded here, on CLIP's preprocessing spelled out
    let (vit, _) = load_vit(&ckpt, VitConfig::from_json_file(&config).unwrap()).unwrap();
    let pre = Preprocess {
        img_size: Size2::square(32),
        in_chans: 3,
        crop_pct: 1.0,
        interpolation: Interpolation::Bicubic,
        // OpenAI CLIP's mean and std, as its preprocessing states them
        normalization: Normalization {
            mean: [0.48145466f64, 0.4578275, 0.40821073].map(|v| v as f32).to_vec(),
            std: [0.26862954f64, 0.26130258, 0.27577711].map(|v| v as f32).to_vec(),
        },
    };
    let files: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
    let want =
        forward(&vit, &files, &pre, &VitOptions { graphs: vec!["grid8:1".parse().unwrap()], ..Default::default() });
    assert_eq!(e.data, want.as_slice());
    // distinct photographs, distinct embeddings
    assert_ne!(e.data[..32], e.data[32..64]);
}
