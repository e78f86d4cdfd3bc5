//! The ViT checkpoints people have, brought to timm's names: what DDP, DINO, MAE and CLIP put
//! around or instead of timm's `VisionTransformer` state dict.
//!
//! ```text
//! module.* / _orig_mod.*        DDP / torch.compile wrappers: stripped when every key has it
//! backbone.* (+ head.*)         DINO's teacher / student: the backbone kept, its head dropped
//! mask_token, decoder_*         MAE's pretraining decoder: dropped (the encoder is timm's ViT)
//! [visual.]conv1, class_embedding, positional_embedding, ln_pre,
//! transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj},
//! ln_post, proj                 OpenAI CLIP / open_clip vision tower -> timm, as timm's
//!                               `_convert_openai_clip`: norm_pre, qkv, proj, fc1/fc2, norm;
//!                               cls_token [1,1,D], pos_embed [1,T,D], head.weight = proj^T
//!                               with a zero head.bias; the text tower's keys are dropped
//! ```
//!
//! Every change is one line of the returned notes. timm's own names pass unchanged.
//!
//! ```
//! use patchgraph::checkpoint::{TensorMap, to_timm_vit};
//! let mut m = TensorMap::default();
//! m.insert("module.backbone.cls_token", vec![1, 1, 2], vec![0.0; 2]).unwrap();
//! m.insert("module.head.last_layer.weight_v", vec![3, 2], vec![0.0; 6]).unwrap();
//! let (m, notes) = to_timm_vit(m).unwrap();
//! assert!(m.contains("cls_token") && !m.contains("head.last_layer.weight_v"));
//! assert_eq!(notes.len(), 2); // `module.` stripped; the DINO head dropped
//! ```

use super::TensorMap;
use crate::error::Result;

/// Whether `map` holds an OpenAI CLIP / open_clip vision tower (with or without `visual.`).
pub fn is_clip_vision(map: &TensorMap) -> bool {
    clip_prefix(map).is_some()
}

fn clip_prefix(map: &TensorMap) -> Option<&'static str> {
    ["visual.", ""]
        .into_iter()
        .find(|p| map.contains(&format!("{p}class_embedding")) && map.contains(&format!("{p}conv1.weight")))
}

/// Renames (or drops, when `f` returns `None`) every tensor, floats and integers alike.
fn rename(map: TensorMap, f: impl Fn(&str) -> Option<String>) -> Result<TensorMap> {
    let TensorMap { floats, ints, unreadable, metadata, problems, allow_nonfinite } = map;
    let mut out = TensorMap { metadata, problems, allow_nonfinite, ..Default::default() };
    for (k, t) in floats {
        if let Some(n) = f(&k) {
            out.insert(n, t.shape, t.data)?;
        }
    }
    for (k, (shape, data)) in ints {
        if let Some(n) = f(&k) {
            out.insert_ints(n, shape, data)?;
        }
    }
    for (k, dtype) in unreadable {
        if let Some(n) = f(&k) {
            out.unreadable.insert(n, dtype);
        }
    }
    Ok(out)
}

fn names(map: &TensorMap) -> Vec<String> {
    map.floats.keys().chain(map.ints.keys()).chain(map.unreadable.keys()).cloned().collect()
}

/// `map` under timm's ViT names, and one note per change (see the module docs).
pub fn to_timm_vit(mut map: TensorMap) -> Result<(TensorMap, Vec<String>)> {
    let mut notes = Vec::new();
    for wrapper in ["module.", "_orig_mod."] {
        let all = names(&map);
        if !all.is_empty() && all.iter().all(|k| k.starts_with(wrapper)) {
            map = rename(map, |k| Some(k[wrapper.len()..].to_string()))?;
            notes.push(format!("`{wrapper}` prefix stripped"));
        }
    }
    let all = names(&map);
    if all.iter().any(|k| k.starts_with("backbone.")) {
        let dropped: Vec<&String> = all.iter().filter(|k| !k.starts_with("backbone.")).collect();
        if !dropped.is_empty() {
            notes.push(format!(
                "{} tensors outside `backbone.` dropped (DINO's projection head): {}",
                dropped.len(),
                preview(&dropped)
            ));
        }
        map = rename(map, |k| k.strip_prefix("backbone.").map(str::to_string))?;
    }
    let all = names(&map);
    if all.iter().any(|k| k.starts_with("decoder_")) && map.contains("mask_token") {
        let n = all.iter().filter(|k| k.starts_with("decoder_") || *k == "mask_token").count();
        notes.push(format!("{n} tensors of MAE's pretraining decoder (mask_token, decoder_*) dropped"));
        map = rename(map, |k| (!k.starts_with("decoder_") && k != "mask_token").then(|| k.to_string()))?;
    }
    if let Some(prefix) = clip_prefix(&map) {
        let all = names(&map);
        let text = all.iter().filter(|k| !k.starts_with(prefix)).count();
        if text > 0 {
            notes.push(format!("{text} tensors outside the vision tower (`{prefix}`) dropped (the text tower)"));
        }
        map = clip_to_timm(map, prefix)?;
        notes.push("CLIP vision tower renamed to timm's names (as timm's _convert_openai_clip)".into());
    }
    Ok((map, notes))
}

/// timm's `_convert_openai_clip`: the name swaps in order, `proj` to a transposed head with a
/// zero bias, the class and position embeddings given timm's leading axes.
fn clip_to_timm(map: TensorMap, prefix: &str) -> Result<TensorMap> {
    const SWAPS: &[(&str, &str)] = &[
        ("conv1", "patch_embed.proj"),
        ("positional_embedding", "pos_embed"),
        ("transformer.resblocks.", "blocks."),
        ("ln_pre", "norm_pre"),
        ("ln_post", "norm"),
        ("ln_", "norm"),
        ("in_proj_", "qkv."),
        ("out_proj", "proj"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
        // open_clip's LayerScale
        ("ls_1.gamma", "ls1.gamma"),
        ("ls_2.gamma", "ls2.gamma"),
    ];
    let mut out = rename(map, |k| {
        let mut k = k.strip_prefix(prefix)?.to_string();
        for (from, to) in SWAPS {
            k = k.replace(from, to);
        }
        Some(k)
    })?;
    if let Some(p) = out.remove("proj") {
        // x @ proj [D x E]  ==  head(x) with head.weight = proj^T [E x D]
        if p.shape.len() != 2 {
            return Err(crate::Error::shape("CLIP `proj`", "[width, embed_dim]", format!("{:?}", p.shape)));
        }
        let (d, e) = (p.shape[0], p.shape[1]);
        out.insert("head.weight", vec![e, d], super::permute_axes(&p.data, &p.shape, &[1, 0])?)?;
        out.insert("head.bias", vec![e], vec![0.0; e])?;
    }
    if let Some(c) = out.remove("class_embedding") {
        let d = c.data.len();
        out.insert("cls_token", vec![1, 1, d], c.data)?;
    }
    if let Some(p) = out.remove("pos_embed")
        && p.shape.len() == 2
    {
        out.insert("pos_embed", vec![1, p.shape[0], p.shape[1]], p.data)?;
    }
    Ok(out)
}

fn preview(names: &[&String]) -> String {
    let mut s: Vec<&str> = names.iter().take(4).map(|n| n.as_str()).collect();
    if names.len() > 4 {
        s.push("...");
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_proj_becomes_the_transposed_head() {
        let mut m = TensorMap::default();
        m.insert("visual.class_embedding", vec![2], vec![1.0, 2.0]).unwrap();
        m.insert("visual.conv1.weight", vec![2, 3, 1, 1], vec![0.0; 6]).unwrap();
        m.insert("visual.proj", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        m.insert("visual.transformer.resblocks.0.attn.in_proj_weight", vec![6, 2], vec![0.0; 12]).unwrap();
        m.insert("visual.transformer.resblocks.0.ln_1.weight", vec![2], vec![0.0; 2]).unwrap();
        m.insert("token_embedding.weight", vec![5, 2], vec![0.0; 10]).unwrap();
        let (m, _) = to_timm_vit(m).unwrap();
        // proj = [[1, 2, 3], [4, 5, 6]] -> head.weight = [[1, 4], [2, 5], [3, 6]]
        assert_eq!(m.get("head.weight").unwrap().data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(m.get("head.bias").unwrap().data, vec![0.0; 3]);
        assert_eq!(m.get("cls_token").unwrap().shape, vec![1, 1, 2]);
        assert!(m.contains("blocks.0.attn.qkv.weight") && m.contains("blocks.0.norm1.weight"));
        assert!(m.contains("patch_embed.proj.weight") && !m.contains("token_embedding.weight"));
    }
}
