//! `patchgraph train` end to end on the bundled digits: the files it writes, and that stopping
//! after one epoch and resuming gives exactly the model of an uninterrupted run.

use patchgraph::checkpoint::TensorMap;
use std::path::Path;
use std::process::Command;

fn train(out: &Path, epochs: usize, resume: bool) -> String {
    train_model(out, epochs, resume, &[])
}

fn train_model(out: &Path, epochs: usize, resume: bool, model: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchgraph"));
    cmd.args(["train", "--data", concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k")])
        .args(model)
        .args(["--patch", "7", "--dim", "16", "--depth", "1", "--heads", "2", "--batch", "64", "--limit", "256"])
        .args(["--epochs", &epochs.to_string(), "--threads", "2", "--out"])
        .arg(out);
    if resume {
        cmd.arg("--resume");
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn resumed_training_equals_an_uninterrupted_run() {
    let base = std::env::temp_dir().join(format!("pg-train-{}", std::process::id()));
    let (straight, resumed) = (base.join("straight"), base.join("resumed"));
    let stdout = train(&straight, 2, false);
    assert!(stdout.contains("test accuracy"), "{stdout}");
    train(&resumed, 1, false);
    let again = train(&resumed, 2, true);
    assert!(again.contains("resuming after epoch 1"), "{again}");

    // metrics: one row per epoch, in both formats
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), 2);
    assert_eq!(metrics[1]["epoch"], 2);
    let csv = std::fs::read_to_string(resumed.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("epoch,train_loss,train_accuracy,test_loss,test_accuracy"));

    // the checkpoints: timm names, the same bits
    let a = TensorMap::load_safetensors(straight.join("checkpoint.safetensors")).unwrap();
    let b = TensorMap::load_safetensors(resumed.join("checkpoint.safetensors")).unwrap();
    assert!(a.contains("blocks.0.attn.qkv.weight") && a.contains("norm.weight") && a.contains("head.weight"));
    let names: Vec<String> = a.shapes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, b.shapes().map(|(n, _)| n.to_string()).collect::<Vec<_>>());
    for n in &names {
        assert_eq!(a.get(n).unwrap().data, b.get(n).unwrap().data, "{n} differs after resuming");
    }
    // the same losses and accuracies epoch by epoch (wall-time fields aside)
    let resumed_metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.join("metrics.json")).unwrap()).unwrap();
    for e in 0..2 {
        for key in ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"] {
            assert_eq!(metrics[e][key], resumed_metrics[e][key], "epoch {}: {key}", e + 1);
        }
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_patchgraph"))
        .args(["train", "--data", "/nonexistent", "--epochs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let out = Command::new(env!("CARGO_BIN_EXE_patchgraph"))
        .args(["train", "--data", concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k"), "--model", "resnet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected vit, gat, gatv2 or vig"));
}

/// The GAT and ViG families through the same command: their checkpoints carry their own names
/// and config, and resuming gives the same bits as an uninterrupted run.
#[test]
fn gat_and_vig_train_and_resume() {
    for (model, key, tensor) in [
        ("gat", "patchgraph_patch_gat_config", "layers.0.att_src"),
        ("vig", "patchgraph_vig_config", "blocks.0.grapher.graph_conv.weight"),
    ] {
        let base = std::env::temp_dir().join(format!("pg-train-{model}-{}", std::process::id()));
        let (straight, resumed) = (base.join("straight"), base.join("resumed"));
        let args = ["--model", model, "--k", "3"];
        train_model(&straight, 2, false, &args);
        train_model(&resumed, 1, false, &args);
        let again = train_model(&resumed, 2, true, &args);
        assert!(again.contains("resuming after epoch 1"), "{again}");
        let a = TensorMap::load_safetensors(straight.join("checkpoint.safetensors")).unwrap();
        let b = TensorMap::load_safetensors(resumed.join("checkpoint.safetensors")).unwrap();
        assert!(a.contains(tensor) && a.metadata().contains_key(key), "{model}");
        for (n, _) in a.shapes() {
            assert_eq!(a.get(n).unwrap().data, b.get(n).unwrap().data, "{model}: {n} differs after resuming");
        }
        // resuming a GAT run as a ViG (or the reverse) is a clear error
        let other = if model == "gat" { "vig" } else { "gat" };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchgraph"));
        let out = cmd
            .args(["train", "--data", concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k"), "--model", other])
            .args(["--epochs", "2", "--resume", "--out"])
            .arg(&resumed)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("metadata"), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

/// The other two data formats through `patchgraph train`: an image folder of PNGs (resized,
/// RGB, flips) and CIFAR-10 binary batches. Each set is trivially separable (bright red vs
/// dark blue images), so a few epochs must classify the test images perfectly.
#[test]
fn image_folders_and_cifar_train() {
    let base = std::env::temp_dir().join(format!("pg-train-formats-{}", std::process::id()));
    // image folder: train/{blue,red} and test/{blue,red}, 20 x 20 PNGs resized to 16
    for split in ["train", "test"] {
        for (class, rgb) in [("blue", [10u8, 20, 200]), ("red", [220u8, 30, 20])] {
            let d = base.join("folder").join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..8u8 {
                let img = image::RgbImage::from_fn(20, 20, |x, y| {
                    let n = ((x as u8).wrapping_mul(7) ^ (y as u8).wrapping_mul(13) ^ i) % 40;
                    image::Rgb([rgb[0].saturating_add(n), rgb[1].saturating_add(n), rgb[2].saturating_sub(n)])
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    // CIFAR-10: labels 3 (dark) and 7 (bright), records of 1 + 3072 bytes
    let cifar = base.join("cifar").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar).unwrap();
    let batch = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|r| {
                let label = if r % 2 == 0 { 3u8 } else { 7 };
                let level = if label == 3 { 30u8 } else { 220 };
                std::iter::once(label).chain((0..3072).map(move |p| level.wrapping_add((p % 17) as u8)))
            })
            .collect()
    };
    for i in 1..=5 {
        std::fs::write(cifar.join(format!("data_batch_{i}.bin")), batch(8)).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), batch(10)).unwrap();

    let run = |data: &Path, extra: &[&str]| -> serde_json::Value {
        let out = base.join(format!("out-{}", data.file_name().unwrap().to_string_lossy()));
        let output = Command::new(env!("CARGO_BIN_EXE_patchgraph"))
            .args(["train", "--data"])
            .arg(data)
            .args(["--dim", "16", "--depth", "1", "--heads", "2", "--batch", "8", "--lr", "3e-3"])
            .args(["--epochs", "6", "--threads", "2", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
    };
    let folder = run(&base.join("folder"), &["--image-size", "16", "--patch", "4", "--flip", "--pool", "avg"]);
    assert_eq!(folder[5]["test_accuracy"], 1.0, "{folder}");
    let cifar = run(&base.join("cifar"), &["--patch", "8", "--model", "gat"]);
    assert_eq!(cifar[5]["test_accuracy"], 1.0, "{cifar}");
    std::fs::remove_dir_all(&base).unwrap();
}
