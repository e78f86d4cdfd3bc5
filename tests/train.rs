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
