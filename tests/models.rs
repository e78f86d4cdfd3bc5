//! The GAT-on-patches and ViG model families: whole-model gradients against finite
//! differences of their own forward, determinism across thread counts, checkpoints.
//!
//! Gradient check: for each parameter tensor `p` and a random direction `v` in it, the
//! directional derivative `g . v` from the backward must match the central difference
//! `(L(p + h v) - L(p - h v)) / 2h` of the forward loss (f32, `h = 1e-2` or `1e-3`, `|v| = 1`:
//! rounding `~1e-7 L / h`, truncation `~h^2`), within 2% of the larger of the two plus 1e-3
//! of the total gradient norm. The forward and the backward are separate code paths, so a
//! wrong backward line shows up in the tensor it feeds.

use patchgraph::graph::GraphSpec;
use patchgraph::image::ChwImage;
use patchgraph::nn::{Classifier, Init, PatchGat, PatchGatConfig, Vig, VigConfig};

fn images(n: usize, shape: (usize, usize, usize), seed: u64) -> Vec<ChwImage> {
    let mut init = Init::new(seed);
    (0..n)
        .map(|_| ChwImage::new(shape.0, shape.1, shape.2, init.normal(shape.0 * shape.1 * shape.2, 1.0)).unwrap())
        .collect()
}

/// Checks every parameter tensor's gradient of `model` along two random directions.
fn check_gradients<M: Classifier + Clone>(model: &M, graphs: &[GraphSpec], h: f32, jumps: bool, what: &str) {
    let shape = model.input_shape();
    let x = images(3, shape, 5);
    let targets = [0, 1, 2];
    let loss_of = |m: &M| m.loss_grads_logits(&x, &targets, 0.1, graphs).unwrap().0 as f64;
    let (_, grads, _) = model.loss_grads_logits(&x, &targets, 0.1, graphs).unwrap();
    // the gradients by slot
    let mut by_slot: Vec<(usize, Vec<f32>)> = Vec::new();
    model.clone().visit_params_mut(&grads, &mut |slot, _, g, _| by_slot.push((slot, g.to_vec())));
    let total: f64 = by_slot.iter().flat_map(|(_, g)| g.iter()).map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!(total > 0.0, "{what}: zero gradient");
    let mut dir_init = Init::new(11);
    for (slot, g) in &by_slot {
        for _ in 0..2 {
            let mut v = dir_init.normal(g.len(), 1.0);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            let analytic: f64 = g.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum();
            let moved = |sign: f32| {
                let mut m = model.clone();
                m.visit_params_mut(&grads, &mut |s, p, _, _| {
                    if s == *slot {
                        p.iter_mut().zip(&v).for_each(|(a, b)| *a += sign * h * b);
                    }
                });
                loss_of(&m)
            };
            let (up, down) = (moved(1.0), moved(-1.0));
            let fd = (up - down) / (2.0 * h as f64);
            let ok = |fd: f64| (analytic - fd).abs() <= 0.02 * analytic.abs().max(fd.abs()) + 1e-3 * total;
            // Across a change of k-NN neighbours the loss jumps; the side without the jump still
            // gives the derivative (one-sided differences, truncation O(h)).
            let one_sided = jumps && {
                let base = loss_of(model);
                ok((up - base) / h as f64) || ok((base - down) / h as f64)
            };
            assert!(
                ok(fd) || one_sided,
                "{what} slot {slot}: backward {analytic}, finite differences {fd} (gradient norm {total})"
            );
        }
    }
}

fn tiny_gat(v2: bool) -> PatchGat {
    let config = PatchGatConfig {
        image: (2, 12, 12),
        patch: 4,
        dim: 8,
        depth: 2,
        heads: 2,
        num_classes: 3,
        v2,
        ..PatchGatConfig::mnist()
    };
    PatchGat::new(config, &mut Init::new(3)).unwrap()
}

fn tiny_vig() -> Vig {
    let config = VigConfig {
        image: (2, 12, 12),
        patch: 4,
        dim: 8,
        depth: 2,
        num_classes: 3,
        k: 3,
        max_dilation: 2,
        ..VigConfig::mnist()
    };
    Vig::new(config, &mut Init::new(4)).unwrap()
}

#[test]
fn patch_gat_gradients() {
    check_gradients(&tiny_gat(false), &[], 1e-2, false, "GAT on grid8");
    check_gradients(&tiny_gat(false), &["complete".parse().unwrap()], 1e-2, false, "GAT on the complete graph");
}

#[test]
fn patch_gatv2_gradients() {
    check_gradients(&tiny_gat(true), &["knn:4".parse().unwrap()], 1e-2, false, "GATv2 on spatial k-NN");
}

/// ViG with a fixed graph (so the check does not cross a change of neighbours) and with its
/// own feature k-NN graphs (the graph is not differentiated, as in ViG). With k-NN a step moves
/// the features and can change the neighbours, a jump no derivative sees (it does within 1e-3
/// along one direction of this model's patch embedding), so that check steps by `h = 1e-3`
/// and also accepts a matching one-sided difference.
#[test]
fn vig_gradients() {
    check_gradients(&tiny_vig(), &["grid8:1".parse().unwrap()], 1e-2, false, "ViG on grid8");
    check_gradients(&tiny_vig(), &[], 1e-3, true, "ViG on dilated feature k-NN");
}

/// ViG's default graphs: cosine feature k-NN, dilation ramping up to `max_dilation`.
#[test]
fn vig_dilation_ramp() {
    let c = VigConfig { depth: 12, max_dilation: 3, k: 9, ..VigConfig::mnist() };
    let d: Vec<String> = (0..12).map(|l| c.layer_graph(l).to_string()).collect();
    assert_eq!(d[0], "fknn-cos:9:1");
    assert_eq!(d[3], "fknn-cos:9:1");
    assert_eq!(d[4], "fknn-cos:9:2");
    assert_eq!(d[8], "fknn-cos:9:3");
    assert_eq!(d[11], "fknn-cos:9:3");
}

/// Three AdamW steps give the same bits on 1 and on 2 threads, for both families.
#[test]
fn training_steps_do_not_depend_on_threads() {
    fn steps<M: Classifier + Clone + Sync>(model: &M, threads: usize) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut m = model.clone();
            let mut opt = patchgraph::train::AdamW::new(1e-2, 0.05);
            let x = images(6, m.input_shape(), 9);
            let t = [0, 1, 2, 0, 1, 2];
            for _ in 0..3 {
                let (_, mut g, _) = m.loss_grads_logits(&x, &t, 0.1, &[]).unwrap();
                patchgraph::train::clip_grad_norm(&mut M::grad_slices(&mut g), 1.0);
                opt.begin_step();
                m.visit_params_mut(&g, &mut |slot, p, g, decay| opt.update(slot, p, g, decay));
            }
            let map = m.state_dict().unwrap();
            let names: Vec<String> = map.shapes().map(|(n, _)| n.to_string()).collect();
            names.iter().flat_map(|n| map.get(n).unwrap().data.clone()).collect()
        })
    }
    let gat = tiny_gat(false);
    assert_eq!(steps(&gat, 1), steps(&gat, 2));
    let vig = tiny_vig();
    let (one, two) = (steps(&vig, 1), steps(&vig, 2));
    assert_eq!(one, two);
    // and the steps did something
    let before = vig.state_dict().unwrap();
    let first: Vec<f32> = before.get("blocks.0.grapher.fc1.weight").unwrap().data.clone();
    assert_ne!(&one[..first.len()], &first[..], "the parameters did not move");
}

/// state_dict -> load gives the same model (same logits); a checkpoint with a missing, an
/// unexpected and a misshapen tensor is one error naming all three.
#[test]
fn checkpoints_round_trip_and_report_every_problem() {
    let gat = tiny_gat(true);
    let map = gat.state_dict().unwrap();
    assert!(
        map.contains("layers.1.lin_l.weight") && map.contains("layers.0.att") && map.contains("patch_embed.pos_embed")
    );
    let back = PatchGat::load(gat.config().clone(), map, "gat").unwrap();
    assert_eq!(back, gat);
    let vig = tiny_vig();
    let mut map = vig.state_dict().unwrap();
    let back = Vig::load(vig.config().clone(), map.clone(), "vig").unwrap();
    assert_eq!(back, vig);
    let x = images(2, vig.input_shape(), 1);
    assert_eq!(back.forward(&x, &[]).unwrap(), vig.forward(&x, &[]).unwrap());
    map.remove("blocks.1.grapher.graph_conv.bias");
    map.insert("blocks.0.ffn.fc1.weight", vec![3, 3], vec![0.0; 9]).unwrap();
    map.insert("extra", vec![1], vec![0.0]).unwrap();
    let err = Vig::load(vig.config().clone(), map, "bad.safetensors").unwrap_err().to_string();
    for needle in ["blocks.1.grapher.graph_conv.bias", "blocks.0.ffn.fc1.weight", "extra", "bad.safetensors"] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
}

/// Wrong image shapes and NaN pixels are errors, not panics.
#[test]
fn bad_inputs_are_errors() {
    let gat = tiny_gat(false);
    let wrong = images(1, (1, 12, 12), 0);
    assert!(gat.forward(&wrong, &[]).unwrap_err().to_string().contains("image 0"));
    let mut nan = images(1, (2, 12, 12), 0);
    nan[0].as_mut_slice()[5] = f32::NAN;
    assert!(gat.forward(&nan, &[]).is_err());
    assert!(tiny_vig().forward(&[], &[]).is_err());
    // a k-NN asking for more neighbours than there are patches
    let err = tiny_vig().forward(&images(1, (2, 12, 12), 0), &["fknn:5:2".parse().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("k-NN"), "{err}");
}
