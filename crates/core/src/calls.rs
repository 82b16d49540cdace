//! Validated op calls, as backends receive them, and op outputs.
//!
//! A call can only be built by [`crate::ops`], after validation: a backend that receives one
//! may rely on every shape, dtype and parameter rule of the contract. The sizes are carried
//! alongside so backends need not re-derive them.

use crate::{DType, DeviceTensor, ExpertsParams, MlaDecodeParams, RouteParams};

/// Proof that a call went through validation; only this crate can make one.
#[derive(Debug, Clone, Copy)]
pub struct Validated(pub(crate) ());

/// A validated `moe_route` call.
#[derive(Debug, Clone, Copy)]
pub struct MoeRouteCall<'a> {
    /// Router logits [T, E], F32 | F16 | BF16 (computed in f32).
    pub logits: &'a DeviceTensor,
    /// Selection bias [E], F32, if any.
    pub bias: Option<&'a DeviceTensor>,
    /// Routing parameters.
    pub params: &'a RouteParams,
    /// T: tokens.
    pub tokens: usize,
    /// E: routed experts.
    pub experts: usize,
    /// Validation marker.
    pub validated: Validated,
}

/// The result of `moe_route`.
#[derive(Debug, Clone)]
pub struct MoeRouteOutput {
    /// Selected experts [T, top_k], I32, in descending selection score.
    pub topk_ids: DeviceTensor,
    /// Their weights [T, top_k], F32.
    pub topk_weights: DeviceTensor,
}

/// A validated `moe_experts` call.
#[derive(Debug, Clone, Copy)]
pub struct MoeExpertsCall<'a> {
    /// Tokens [T, H], run dtype.
    pub x: &'a DeviceTensor,
    /// Gate and up projections [E, 2I, H] (rows 0..I gate W1, I..2I up W3), run dtype.
    pub w13: &'a DeviceTensor,
    /// Down projections [E, H, I], run dtype.
    pub w2: &'a DeviceTensor,
    /// Expert per token and slot [T, k], I32; -1 = none. Contents not yet checked.
    pub topk_ids: &'a DeviceTensor,
    /// Weights [T, k], F32.
    pub topk_weights: &'a DeviceTensor,
    /// Op parameters.
    pub params: &'a ExpertsParams,
    /// The run dtype (of x, w13, w2).
    pub dtype: DType,
    /// T: tokens.
    pub tokens: usize,
    /// H: hidden size.
    pub hidden: usize,
    /// I: expert intermediate size.
    pub inter: usize,
    /// E: experts.
    pub experts: usize,
    /// k: slots per token.
    pub top_k: usize,
    /// Validation marker.
    pub validated: Validated,
}

/// A validated `mla_decode` call.
#[derive(Debug, Clone, Copy)]
pub struct MlaDecodeCall<'a> {
    /// Queries [B, Sq, Hq, Dqk], run dtype.
    pub q: &'a DeviceTensor,
    /// Paged latent cache [num_blocks, block_size, Hkv, Dqk], run dtype.
    pub kv_cache: &'a DeviceTensor,
    /// Block table [B, max_blocks], I32. Contents not yet checked.
    pub block_table: &'a DeviceTensor,
    /// Sequence lengths [B], I32. Contents not yet checked.
    pub cache_seqlens: &'a DeviceTensor,
    /// Op parameters.
    pub params: &'a MlaDecodeParams,
    /// The run dtype (of q and kv_cache).
    pub dtype: DType,
    /// B: batch.
    pub batch: usize,
    /// Sq: queries per sequence.
    pub s_q: usize,
    /// Hq: query heads.
    pub h_q: usize,
    /// Hkv: cache heads.
    pub h_kv: usize,
    /// Dqk: query/key width.
    pub d_qk: usize,
    /// Dv: value width (`params.head_dim_v`).
    pub d_v: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Validation marker.
    pub validated: Validated,
}

/// The result of `mla_decode`.
#[derive(Debug, Clone)]
pub struct MlaDecodeOutput {
    /// Attention output [B, Sq, Hq, Dv], run dtype.
    pub o: DeviceTensor,
    /// Natural-log softmax denominators [B, Hq, Sq], F32 (-inf for an empty range).
    pub lse: DeviceTensor,
}

impl MlaDecodeCall<'_> {
    /// Number of cache positions query `i` (0-based, of `s_q`) attends to in a sequence of
    /// `seqlen` tokens: `seqlen` without the causal mask, `seqlen - s_q + i + 1` with it
    /// (bottom-right aligned). Zero or less means an empty range.
    pub fn attended_len(&self, seqlen: usize, i: usize) -> i64 {
        if self.params.causal {
            seqlen as i64 - self.s_q as i64 + i as i64 + 1
        } else {
            seqlen as i64
        }
    }
}
