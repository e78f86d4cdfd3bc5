//! ViT inference on the bundled photos, from code: the same weights on the complete graph
//! (timm's ViT) and on sparse patch graphs, compared.
//!
//! ```text
//! cargo run --release --example vit_infer                                  # seeded random ViT-Ti/16
//! cargo run --release --example vit_infer -- FILE.safetensors vit_base_patch16_224   # a timm checkpoint
//! cargo run --release --example vit_infer -- ViT-B_16.npz ViT-B_16                   # a Google .npz
//! ```
//!
//! Without a checkpoint the weights are random (seed 0), so the class names mean nothing; the
//! pipeline, the graphs and the comparison numbers are the real thing. With a pre-trained
//! checkpoint the top classes are the model's.

use patchgraph::graph::GraphSpec;
use patchgraph::image::{Interpolation, Normalization};
use patchgraph::infer::{Preprocess, compare, load_inputs, load_labels, load_vit, predict, top_k};
use patchgraph::nn::{Init, Vit, VitConfig, VitOptions};

fn main() -> patchgraph::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (vit, source) = match &args[..] {
        [] => (
            Vit::new(VitConfig::arch("vit_tiny_patch16_224")?, &mut Init::new(0))?,
            "random weights (seed 0)".to_string(),
        ),
        [checkpoint, arch] => {
            let (vit, notes) = load_vit(checkpoint, VitConfig::arch(arch)?)?;
            notes.iter().for_each(|n| println!("adapted: {n}"));
            (vit, checkpoint.clone())
        }
        _ => {
            eprintln!("usage: vit_infer [CHECKPOINT ARCH]");
            std::process::exit(2);
        }
    };
    let cfg = vit.config().clone();
    println!(
        "ViT D={} depth={} heads={} patch={} img={} ({source})",
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size
    );
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/images");
    let photos = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].map(|f| format!("{dir}/{f}"));
    let preprocess = Preprocess {
        img_size: cfg.img_size,
        in_chans: cfg.in_chans,
        crop_pct: 0.875,
        interpolation: Interpolation::Bicubic,
        normalization: Normalization::inception(),
    };
    let inputs = load_inputs(&photos, &preprocess)?;
    let images: Vec<_> = inputs.iter().map(|i| i.image.clone()).collect();
    let labels = load_labels(None, cfg.num_classes)?;

    let (complete, complete_s) = predict(&vit, &images, &VitOptions::default(), 3)?;
    println!("\ncomplete graph, batch of {}: {:.1} ms per forward", images.len(), 1e3 * complete_s);
    for (i, input) in inputs.iter().enumerate() {
        let name = input.name.rsplit('/').next().unwrap_or(&input.name);
        let top: Vec<String> = top_k(complete.row(i), 3)
            .into_iter()
            .map(|(c, p)| format!("{p:.3} {}", labels.as_ref().map_or(c.to_string(), |l| l[c].clone())))
            .collect();
        println!("  {name:<14} {}", top.join(" | "));
    }

    println!("\nsame weights, other graphs (against the complete graph):");
    println!("  {:<12} {:>10} {:>12} {:>10} {:>9}", "graph", "top-1 agr.", "KL (nats)", "ms", "speed-up");
    for spec in ["grid8:1", "window:7", "nat:7", "knn:16", "fknn:9:2"] {
        let graphs = vec![spec.parse::<GraphSpec>()?];
        let (p, s) = predict(&vit, &images, &VitOptions { graphs, ..Default::default() }, 3)?;
        let c = compare(&complete, &p, complete_s, s);
        println!(
            "  {spec:<12} {:>9.0}% {:>12.4} {:>10.1} {:>8.2}x",
            100.0 * c.top1_agreement,
            c.mean_kl,
            1e3 * s,
            c.speedup
        );
    }
    Ok(())
}
