//! The command line with damaged and hostile inputs (issue 14): every case here once ended in a
//! silent wrong answer or an abort. Each now ends in a clear error, exit code 1, and nothing
//! written; `notes/reliability.md` has the table of what was tried.
//!
//! Also: a `train` killed while it saves leaves whole files (the old ones or the new ones).

use patchgraph::checkpoint::TensorMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture(name: &str) -> String {
    format!("{ROOT}/tests/fixtures/vit/{name}")
}

fn photo() -> String {
    format!("{ROOT}/data/images/chelsea.png")
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-reliability-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn patchgraph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchgraph")).args(args).output().unwrap()
}

/// The command failed with a message (not a crash: exit code 1, `error:` first) containing
/// every one of `needles`.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1 (a typed error), got {:?}: {stderr}", out.status);
    assert!(stderr.starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` missing from: {stderr}");
    }
}

/// The tiny timm fixture with `value` at flat position `pos` of `name`, saved in `dir`.
fn poisoned_checkpoint(dir: &Path, name: &str, pos: usize, value: f32) -> String {
    let mut map = TensorMap::load_safetensors(fixture("tiny_token.safetensors")).unwrap();
    map.set_allow_nonfinite(true);
    let mut t = map.take_any(name).unwrap();
    t.data[pos] = value;
    map.insert(name, t.shape, t.data).unwrap();
    let path = dir.join("poisoned.safetensors");
    map.save_safetensors(&path).unwrap();
    path.display().to_string()
}

#[test]
fn nonfinite_checkpoints_are_refused_unless_allowed() {
    let dir = temp("nan");
    let config = fixture("tiny_token.json");
    for (name, pos, value, index) in [
        ("head.weight", 7, f32::NAN, "[0, 7]"),
        ("head.bias", 3, f32::INFINITY, "[3]"),
        ("blocks.0.attn.qkv.weight", 100, f32::NAN, "[2, 4]"),
    ] {
        let ckpt = poisoned_checkpoint(&dir, name, pos, value);
        let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", &config, &photo()]);
        assert_error(&out, &[name, index, "--allow-nonfinite"]);
        let target = dir.join("converted.safetensors");
        let out =
            patchgraph(&["convert", "--checkpoint", &ckpt, "--config", &config, "--out", target.to_str().unwrap()]);
        assert_error(&out, &[name]);
        assert!(!target.exists(), "convert wrote nothing");
        // allowed: the NaN is not absorbed into finite probabilities
        let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", &config, &photo(), "--allow-nonfinite"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("NaN") || stderr.contains("non-finite"),
            "{name}: finite output from a NaN weight:\n{stdout}{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_from_flags_and_files_are_checked_before_allocation() {
    let dir = temp("sizes");
    let ckpt = fixture("tiny_token.safetensors");
    let config = fixture("tiny_token.json");
    let out_file = dir.join("big.safetensors");
    let out = patchgraph(&[
        "convert",
        "--checkpoint",
        &ckpt,
        "--config",
        &config,
        "--img-size",
        "1000000",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_error(&out, &["img_size", "tokens"]);
    // a config whose image size is huge
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["img_size"] = serde_json::json!(8 * 4_000_000u64);
    let huge = dir.join("huge.json");
    std::fs::write(&huge, json.to_string()).unwrap();
    let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", huge.to_str().unwrap(), &photo()]);
    assert_error(&out, &["img_size"]);
    // a crop fraction that would resize to 32 / 0.001 = 32000 px a side
    let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", &config, &photo(), "--crop-pct", "0.001"]);
    assert_error(&out, &["32000 x 48106 pixels"]);
    let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", &config, &photo(), "--crop-pct", "1.5"]);
    assert_error(&out, &["--crop-pct"]);
    // a 60000 x 1 image: its shorter side to 36 makes it 2.16 M pixels wide
    let strip = dir.join("strip.png");
    image::GrayImage::from_pixel(60_000, 1, image::Luma([128])).save(&strip).unwrap();
    let out = patchgraph(&["infer", "--checkpoint", &ckpt, "--config", &config, strip.to_str().unwrap()]);
    assert_error(&out, &["pixels"]);
    let out = patchgraph(&["graph", &photo(), "--size", "10000000"]);
    assert_error(&out, &["pixels"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist5k")];
    args.extend(["--patch", "7", "--dim", "16", "--depth", "1", "--heads", "2", "--limit", "128"]);
    args.extend(["--threads", "2", "--out", out]);
    args.extend(extra);
    if !extra.contains(&"--batch") {
        args.extend(["--batch", "64"]);
    }
    args
}

#[test]
fn training_flags_that_make_no_sense_are_errors() {
    let dir = temp("flags");
    let out_dir = dir.join("run");
    let run = out_dir.to_str().unwrap();
    for (flags, needle) in [
        (&["--epochs", "0"][..], "--epochs"),
        (&["--lr=-1e-3"][..], "--lr"),
        (&["--lr", "nan"][..], "--lr"),
        (&["--warmup=-1"][..], "--warmup"),
        (&["--warmup", "5", "--epochs", "2"][..], "--warmup"),
        (&["--weight-decay=-0.1"][..], "--weight-decay"),
        (&["--smoothing", "1.5"][..], "--smoothing"),
    ] {
        let out = patchgraph(&train_args(run, flags));
        assert_error(&out, &[needle]);
        assert!(!out_dir.join("checkpoint.safetensors").exists(), "{flags:?} wrote a checkpoint");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_must_fit_the_schedule_and_the_model() {
    let dir = temp("resume");
    let out_dir = dir.join("run");
    let run = out_dir.to_str().unwrap();
    let out = patchgraph(&train_args(run, &["--epochs", "1"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // all epochs done
    assert_error(&patchgraph(&train_args(run, &["--epochs", "1", "--resume"])), &["already done"]);
    // another batch size: the optimiser's 2 steps are not 1 epoch of 4 batches
    assert_error(&patchgraph(&train_args(run, &["--epochs", "2", "--resume", "--batch", "32"])), &["steps"]);
    // a damaged optimiser state: a slot count far beyond the file (capacity overflow before)
    let opt = out_dir.join("optimizer.safetensors");
    let good = std::fs::read(&opt).unwrap();
    let mut state = TensorMap::load_safetensors(&opt).unwrap();
    for slots in ["18446744073709551615", "2000000000"] {
        state.set_metadata("adamw.slots", slots);
        state.save_safetensors(&opt).unwrap();
        assert_error(&patchgraph(&train_args(run, &["--epochs", "2", "--resume"])), &["adamw.slots"]);
    }
    // a state of another model (one slot too few)
    std::fs::write(&opt, &good).unwrap();
    let mut state = TensorMap::load_safetensors(&opt).unwrap();
    let last = state.metadata()["adamw.slots"].parse::<usize>().unwrap() - 1;
    state.remove(&format!("adamw.m.{last}"));
    state.remove(&format!("adamw.v.{last}"));
    state.set_metadata("adamw.slots", last.to_string());
    state.save_safetensors(&opt).unwrap();
    assert_error(&patchgraph(&train_args(run, &["--epochs", "2", "--resume"])), &["slots in the state"]);
    // a NaN moment
    std::fs::write(&opt, &good).unwrap();
    let mut state = TensorMap::load_safetensors(&opt).unwrap();
    let t = state.take_any("adamw.v.0").unwrap();
    let mut data = t.data;
    data[0] = f32::NAN;
    state.insert("adamw.v.0", t.shape, data).unwrap();
    state.save_safetensors(&opt).unwrap();
    assert_error(&patchgraph(&train_args(run, &["--epochs", "2", "--resume"])), &["adamw.v.0", "[0]"]);
    // the good state resumes
    std::fs::write(&opt, &good).unwrap();
    let out = patchgraph(&train_args(run, &["--epochs", "2", "--resume"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn threads_is_common_to_every_command() {
    for cmd in ["graph", "attention", "plot", "bench", "train", "convert", "infer"] {
        let out = patchgraph(&[cmd, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--threads"), "{cmd} --help lacks --threads:\n{help}");
        assert!(help.contains("--allow-nonfinite"), "{cmd} --help lacks --allow-nonfinite");
    }
    let dir = temp("threads");
    let png = dir.join("a.png");
    let out = patchgraph(&[
        "attention",
        "--checkpoint",
        &fixture("tiny_token.safetensors"),
        "--config",
        &fixture("tiny_token.json"),
        &photo(),
        "--threads",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(png.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every file `train --out` leaves is whole: it parses completely, whatever the moment of the
/// kill.
fn assert_whole(dir: &Path) {
    for name in ["checkpoint.safetensors", "optimizer.safetensors"] {
        let path = dir.join(name);
        if path.exists() {
            let map = TensorMap::load_safetensors(&path).unwrap_or_else(|e| panic!("torn {name}: {e}"));
            assert!(map.metadata().contains_key("patchgraph_epoch"), "{name} without its epoch");
        }
    }
    for name in ["metrics.json", "metrics.csv", "curves.png"] {
        let path = dir.join(name);
        if path.exists() {
            let bytes = std::fs::read(&path).unwrap();
            match name {
                "metrics.json" => {
                    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| panic!("torn {name}: {e}"));
                }
                "curves.png" => {
                    image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("torn {name}: {e}"));
                }
                _ => assert!(bytes.ends_with(b"\n"), "torn {name}"),
            }
        }
    }
}

/// A `train` killed (SIGKILL) the moment a temporary file of a save appears, that is in the
/// middle of writing a checkpoint, optimiser state, metrics file or picture, leaves every file
/// whole: the previous epoch's or the new one. Round r kills at the (r+1)-th save seen and
/// resumes from what the round before left (or starts again if no checkpoint was saved yet).
#[test]
fn train_killed_while_saving_leaves_whole_files() {
    let dir = temp("kill");
    let out_dir = dir.join("run");
    let run = out_dir.to_str().unwrap();
    let mut caught = 0;
    for round in 0..6 {
        let resume = out_dir.join("checkpoint.safetensors").exists();
        let mut child = Command::new(env!("CARGO_BIN_EXE_patchgraph"))
            .args(train_args(run, &["--epochs", "8"]))
            .args(if resume { &["--resume"][..] } else { &[][..] })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let mut seen = 0;
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            let tmp = std::fs::read_dir(&out_dir)
                .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".tmp")))
                .unwrap_or(false);
            if tmp {
                seen += 1;
                if seen > round {
                    child.kill().unwrap();
                    break true;
                }
                // wait for this save to finish before counting the next
                while child.try_wait().unwrap().is_none()
                    && std::fs::read_dir(&out_dir)
                        .unwrap()
                        .filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                {}
            }
            assert!(started.elapsed().as_secs() < 120, "train did not finish");
        };
        let _ = child.wait();
        caught += killed as usize;
        assert_whole(&out_dir);
        // stale temporary files of the killed process stay behind; clear them for the next round
        for e in std::fs::read_dir(&out_dir).unwrap().filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        if !out_dir.join("checkpoint.safetensors").exists() {
            // killed before the first checkpoint: start again rather than resume
            std::fs::remove_dir_all(&out_dir).unwrap();
        }
        if !killed {
            break;
        }
    }
    assert!(caught > 0, "no kill landed in the middle of a save: the test was blind");
    std::fs::remove_dir_all(&dir).unwrap();
}
