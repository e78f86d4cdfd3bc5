//! Layers that match the peers: [`Linear`], [`LayerNorm`], exact-erf [`gelu`], [`Mlp`],
//! [`GraphAttention`] (timm `Attention`, PyG `GATConv` / `GATv2Conv` / `TransformerConv`) and
//! the pre-LN transformer [`Block`] whose attention runs on any graph.
//!
//! ```
//! use patchgraph::{Graph, Matrix};
//! use patchgraph::nn::{AttentionConfig, GraphAttention, Init};
//! // timm's ViT attention is GraphAttention on the complete graph with self-loops.
//! let attn = GraphAttention::new(AttentionConfig::timm(16, 4), &mut Init::new(0)).unwrap();
//! let tokens = Matrix::from_fn(10, 16, |i, j| ((i * 16 + j) as f32 * 0.1).sin());
//! let y = attn.forward(&Graph::complete(10, true), &tokens).unwrap();
//! assert_eq!(y.shape(), (10, 16));
//! ```

mod activation;
mod block;
mod classifier;
mod elu;
mod gelu;
mod graph_attention;
mod init;
mod layer_norm;
mod linear;
mod loss;
mod low_rank;
mod max_relative;
mod mlp;
mod patch_embed;
mod patch_gat;
mod peer_config;
mod relative_position;
mod vig;
mod vit;

pub use activation::Activation;
pub use block::{Block, BlockCache, BlockConfig, BlockGrads};
pub use classifier::Classifier;
pub use elu::{elu, elu_backward, elu_inplace};
pub use gelu::{gelu, gelu_backward, gelu_backward_inplace, gelu_inplace, gelu_into};
pub use graph_attention::{
    AttentionCache, AttentionConfig, AttentionGrads, AttentionWeights, ForwardOptions, GraphAttention, LayerOutput,
    ParamVisitor,
};
pub use init::Init;
pub use layer_norm::{LayerNorm, LayerNormGrads};
pub use linear::{Linear, LinearGrads};
pub use loss::CrossEntropy;
pub use low_rank::{LowRankAttention, LowRankCache, LowRankGrads, LowRankParams, TokenGrid};
pub use max_relative::MaxRelative;
pub use mlp::{Mlp, MlpGrads, MlpOptions};
pub use patch_embed::{PatchEmbed, PatchEmbedGrads};
pub use patch_gat::{PatchGat, PatchGatConfig, PatchGatGrads};
pub use relative_position::{NO_ENTRY, RelativePositionBias};
pub use vig::{Vig, VigBlock, VigBlockGrads, VigConfig, VigGrads};
pub use vit::{
    GlobalPool, PoolCache, PosEmbed, Size2, Vit, VitConfig, VitGrads, VitOptions, VitOutput, resample_pos_embed,
    vit_pool, vit_pool_backward,
};
