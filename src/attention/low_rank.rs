//! `LowRank`: the efficient attentions that are not graphs. They approximate softmax attention
//! on the complete graph (every token reads every token) in low rank, instead of dropping edges.
//!
//! | spec | method | approximation of `softmax(Q K^T / sqrt(d)) V` per head | extra parameters |
//! |---|---|---|---|
//! | `performer:M:SEED` | Performer FAVOR+ ([`crate::attention::performer`]) | `phi(Q) (phi(K)^T V)`, normalised; `phi` = `M` positive orthogonal random features | the `[M x d]` projection (a buffer drawn from the seed; `M` is `int(d ln d)` when absent or `auto`) |
//! | `linformer:K[:SHARING]` | Linformer ([`crate::attention::linformer`]) | `softmax(Q (E^T K)^T / sqrt(d)) (F^T V)`, `E, F` `[N x K]` | learned `E`, `F` per layer (`headwise`, the default), `E = F` (`kv`), or one `E` for all layers (`layerwise`) |
//! | `nystrom:L[:CONV]` | Nyströmformer ([`crate::attention::nystrom`]) | `softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V` with `L` landmarks | none, or the depthwise residual conv of kernel `CONV` |
//!
//! Each is a configuration of a ViT block's attention with the same `qkv` / `proj` weights:
//! `GraphSpec::LowRank` carries one, and [`crate::nn::LowRankAttention`] holds its parameters.
//! On a patch grid, Nyström's `L` landmarks are means of 2-D patch blocks (`L` must be a square:
//! `sqrt(L) x sqrt(L)` blocks) and the class token is a landmark of its own.
//!
//! ```
//! use patchgraph::attention::low_rank::{LinformerSharing, LowRank};
//! let p: LowRank = "performer:64:7".parse().unwrap();
//! assert_eq!(p, LowRank::Performer { features: 64, seed: 7 });
//! let l: LowRank = "linformer:32:kv".parse().unwrap();
//! assert_eq!(l, LowRank::Linformer { k: 32, sharing: LinformerSharing::KeyValue });
//! assert_eq!("nystrom:16".parse::<LowRank>().unwrap().to_string(), "nystrom:16");
//! assert!("performer:0".parse::<LowRank>().is_err()); // m = 0 features
//! assert_eq!("performer".parse::<LowRank>().unwrap().to_string(), "performer:auto:0");
//! ```

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Which matrices a Linformer shares (the paper's three levels; `E, F` are always shared by the
/// heads of a layer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinformerSharing {
    /// One `E` and one `F` per layer, shared by its heads (the `linformer` package's default).
    #[default]
    Headwise,
    /// `E = F` per layer (the package's `share_kv=True`).
    KeyValue,
    /// One `E = F` for every layer of the model.
    Layerwise,
}

/// A low-rank approximation of complete-graph softmax attention (see the module table).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LowRank {
    /// Performer FAVOR+ with `features` random features (0 = `d ln d`), drawn from `seed`.
    Performer {
        /// `m`, the number of random features (0: `int(d ln d)` for head width `d`).
        features: usize,
        /// Seed of the orthogonal random projection.
        seed: u64,
    },
    /// Linformer projecting keys and values to `k` rows.
    Linformer {
        /// Rows of the projected keys and values.
        k: usize,
        /// What is shared.
        sharing: LinformerSharing,
    },
    /// Nyströmformer with `landmarks` landmarks.
    Nystrom {
        /// Landmarks (patch blocks; a square on a patch grid).
        landmarks: usize,
        /// Kernel of the depthwise residual convolution of the values (0: none).
        residual_kernel: usize,
    },
}

/// Iterations of Nyströmformer's pseudo-inverse (the paper's and the peer's default).
pub const NYSTROM_PINV_ITERATIONS: usize = 6;

impl LowRank {
    /// Whether `name` (the part of a spec before `:`) names a low-rank method.
    pub fn is_name(name: &str) -> bool {
        matches!(name, "performer" | "linformer" | "nystrom")
    }

    /// Whether the method has trained parameters that must come from the model (Linformer's
    /// `E`, `F`; Nyström's residual conv). Performer's projection is drawn from its seed.
    pub fn has_learned_parameters(&self) -> bool {
        match self {
            LowRank::Performer { .. } => false,
            LowRank::Linformer { .. } => true,
            LowRank::Nystrom { residual_kernel, .. } => *residual_kernel > 0,
        }
    }
}

fn number<T: FromStr<Err: fmt::Display>>(spec: &str, option: &str, field: Option<&str>, default: T) -> Result<T> {
    match field {
        None => Ok(default),
        Some(f) => f.parse().map_err(|e: T::Err| {
            Error::invalid("low-rank attention", format!("`{spec}`: {option} `{f}` is not a valid number ({e})"))
        }),
    }
}

impl FromStr for LowRank {
    type Err = Error;

    fn from_str(s: &str) -> Result<LowRank> {
        let fields: Vec<&str> = s.split(':').collect();
        let bad = |msg: String| Error::invalid("low-rank attention", format!("`{s}`: {msg}"));
        let too_many = |max: usize| {
            if fields.len() > max + 1 { Err(bad(format!("has too many `:` fields (at most {max})"))) } else { Ok(()) }
        };
        let method = match fields[0] {
            "performer" => {
                too_many(2)?;
                // Absent or `auto`: the default d ln d (stored as 0), resolved once the head width is known.
                let features = match fields.get(1).copied() {
                    None | Some("auto") => 0,
                    f => match number(s, "features", f, 0usize)? {
                        0 => return Err(bad("features m = 0: FAVOR+ needs at least one random feature".into())),
                        m => m,
                    },
                };
                let seed = number(s, "seed", fields.get(2).copied(), 0)?;
                LowRank::Performer { features, seed }
            }
            "linformer" => {
                too_many(2)?;
                let k = number(s, "k", Some(fields.get(1).copied().unwrap_or("")), 0usize)?;
                if k == 0 {
                    return Err(bad("k = 0: keys and values must be projected to at least one row".into()));
                }
                let sharing = match fields.get(2).copied() {
                    None | Some("headwise") => LinformerSharing::Headwise,
                    Some("kv") => LinformerSharing::KeyValue,
                    Some("layerwise") => LinformerSharing::Layerwise,
                    Some(other) => {
                        return Err(bad(format!("sharing `{other}`: expected headwise, kv or layerwise")));
                    }
                };
                LowRank::Linformer { k, sharing }
            }
            "nystrom" => {
                too_many(2)?;
                let landmarks = number(s, "landmarks", Some(fields.get(1).copied().unwrap_or("")), 0usize)?;
                if landmarks == 0 {
                    return Err(bad("landmarks = 0: at least one landmark is needed".into()));
                }
                let residual_kernel = number(s, "residual conv kernel", fields.get(2).copied(), 0usize)?;
                if residual_kernel > 0 && residual_kernel % 2 == 0 {
                    return Err(bad(format!("residual conv kernel {residual_kernel} is even; it must be odd")));
                }
                LowRank::Nystrom { landmarks, residual_kernel }
            }
            other => {
                return Err(Error::invalid(
                    "low-rank attention",
                    format!("unknown `{other}`: expected performer:M:SEED, linformer:K[:SHARING] or nystrom:L[:CONV]"),
                ));
            }
        };
        Ok(method)
    }
}

impl fmt::Display for LowRank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LowRank::Performer { features: 0, seed } => write!(f, "performer:auto:{seed}"),
            LowRank::Performer { features, seed } => write!(f, "performer:{features}:{seed}"),
            LowRank::Linformer { k, sharing: LinformerSharing::Headwise } => write!(f, "linformer:{k}"),
            LowRank::Linformer { k, sharing: LinformerSharing::KeyValue } => write!(f, "linformer:{k}:kv"),
            LowRank::Linformer { k, sharing: LinformerSharing::Layerwise } => write!(f, "linformer:{k}:layerwise"),
            LowRank::Nystrom { landmarks, residual_kernel: 0 } => write!(f, "nystrom:{landmarks}"),
            LowRank::Nystrom { landmarks, residual_kernel } => write!(f, "nystrom:{landmarks}:{residual_kernel}"),
        }
    }
}

impl TryFrom<String> for LowRank {
    type Error = Error;
    fn try_from(s: String) -> Result<LowRank> {
        s.parse()
    }
}

impl From<LowRank> for String {
    fn from(m: LowRank) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_bad_options_are_named() {
        for s in
            ["performer:16:3", "linformer:8", "linformer:8:kv", "linformer:8:layerwise", "nystrom:9", "nystrom:16:33"]
        {
            assert_eq!(s.parse::<LowRank>().unwrap().to_string(), s);
        }
        assert_eq!("performer".parse::<LowRank>().unwrap(), LowRank::Performer { features: 0, seed: 0 });
        assert_eq!("performer".parse::<LowRank>().unwrap().to_string(), "performer:auto:0");
        assert_eq!("performer:auto:5".parse::<LowRank>().unwrap(), LowRank::Performer { features: 0, seed: 5 });
        for (s, word) in [
            ("performer:0", "m = 0"),
            ("linformer:0", "k = 0"),
            ("linformer", "k"),
            ("linformer:4:heads", "sharing"),
            ("nystrom:0", "landmarks"),
            ("nystrom:4:4", "even"),
            ("nystrom:4:3:1", "too many"),
            ("performer:x", "features"),
        ] {
            let msg = s.parse::<LowRank>().unwrap_err().to_string();
            assert!(msg.contains(word), "{s}: {msg}");
        }
    }
}
