//! Validated op calls, as backends receive them, and op outputs.
//!
//! A call can only be built by [`crate::ops`], after validation: a backend that receives one
//! may rely on every shape, dtype and parameter rule of the contract. The sizes are carried
//! alongside so backends need not re-derive them.

use crate::{
    CacheWriteParams, DType, DeviceTensor, ExpertsParams, IndexerParams, KvQuantizeParams,
    MlaDecodeParams, RouteParams, SparseDecodeParams,
};

/// Proof that a call went through validation; only this crate can make one.
#[derive(Debug, Clone, Copy)]
pub struct Validated(pub(crate) ());

/// A validated `moe_route` call.
#[derive(Debug, Clone, Copy)]
pub struct MoeRouteCall<'a> {
    /// Router logits `[T, E]`, F32 | F16 | BF16 (computed in f32).
    pub logits: &'a DeviceTensor,
    /// Selection bias `[E]`, F32, if any (never with hash routing).
    pub bias: Option<&'a DeviceTensor>,
    /// Hash routing (v2), if any: the ids come from a table instead of a top-k.
    pub hash: Option<HashRouting<'a>>,
    /// Routing parameters.
    pub params: &'a RouteParams,
    /// T: tokens.
    pub tokens: usize,
    /// E: routed experts.
    pub experts: usize,
    /// Validation marker.
    pub validated: Validated,
}

/// The tables of hash routing (DeepSeek-V4's first layers): `ids[t] = tid2eid[input_ids[t]]`.
#[derive(Debug, Clone, Copy)]
pub struct HashRouting<'a> {
    /// Token ids `[T]`, I32. Contents not yet checked (must lie in [0, vocab)).
    pub input_ids: &'a DeviceTensor,
    /// Expert ids per token id `[vocab, top_k]`, I32. Contents not yet checked (the rows
    /// tokens read must hold top_k distinct ids in [0, E)).
    pub tid2eid: &'a DeviceTensor,
    /// Rows of `tid2eid`.
    pub vocab: usize,
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
    /// Gate and up projections [E, 2I, H] (rows 0..I gate W1, I..2I up W3), run dtype or
    /// F8E4M3 (then `fp8_scales` is set).
    pub w13: &'a DeviceTensor,
    /// Down projections [E, H, I], the dtype of `w13`.
    pub w2: &'a DeviceTensor,
    /// The block scales of FP8 weights (v2), `None` for run-dtype weights.
    pub fp8_scales: Option<BlockScales<'a>>,
    /// Expert per token and slot [T, k], I32; -1 = none. Contents not yet checked.
    pub topk_ids: &'a DeviceTensor,
    /// Weights [T, k], F32.
    pub topk_weights: &'a DeviceTensor,
    /// Dense shared experts that every token goes through with weight 1 (v2), if any.
    pub shared: Option<SharedExperts<'a>>,
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

/// The dense shared experts of a `moe_experts` call (DeepSeek's `n_shared_experts`): each
/// adds `W2_s @ swiglu(W1_s x[t], W3_s x[t])` with weight 1 to every token's `y`. Always
/// the run dtype (validation refuses them beside F8E4M3 routed weights).
#[derive(Debug, Clone, Copy)]
pub struct SharedExperts<'a> {
    /// Gate and up projections [S, 2Is, H] (rows 0..Is gate, Is..2Is up), run dtype.
    pub w13: &'a DeviceTensor,
    /// Down projections [S, H, Is], run dtype.
    pub w2: &'a DeviceTensor,
    /// S: shared experts.
    pub count: usize,
    /// Is: their intermediate size (may differ from the routed experts' I).
    pub inter: usize,
}

/// Dequantization multipliers of FP8 expert weights (the checkpoint's `weight_scale_inv`):
/// `W[e, r, c] = w[e, r, c] * scale[e, r / 128, c / 128]`.
#[derive(Debug, Clone, Copy)]
pub struct BlockScales<'a> {
    /// [E, ceil(2I / 128), ceil(H / 128)], F32 (blocks of the fused [2I, H] matrix).
    pub w13_scale: &'a DeviceTensor,
    /// [E, ceil(H / 128), ceil(I / 128)], F32.
    pub w2_scale: &'a DeviceTensor,
}

/// A validated `mla_decode` call.
#[derive(Debug, Clone, Copy)]
pub struct MlaDecodeCall<'a> {
    /// Queries `[B, Sq, Hq, Dqk]`, run dtype.
    pub q: &'a DeviceTensor,
    /// Paged latent cache `[num_blocks, block_size, Hkv, Dqk]`, run dtype; with
    /// `kv_format` `fp8_ds_v32`: U8 `[num_blocks, block_size, 1, 656]`.
    pub kv_cache: &'a DeviceTensor,
    /// Block table `[B, max_blocks]`, I32. Contents not yet checked.
    pub block_table: &'a DeviceTensor,
    /// Sequence lengths `[B]`, I32. Contents not yet checked.
    pub cache_seqlens: &'a DeviceTensor,
    /// Op parameters (`kv_format` says how to read the cache).
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
    /// Dqk: query/key width (576 for `fp8_ds_v32`, whose rows are 656 bytes).
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
        attended_len(self.params.causal, self.s_q, seqlen, i)
    }
}

/// `seqlen` without the causal mask, `seqlen - s_q + i + 1` with it (bottom-right aligned).
fn attended_len(causal: bool, s_q: usize, seqlen: usize, i: usize) -> i64 {
    if causal {
        seqlen as i64 - s_q as i64 + i as i64 + 1
    } else {
        seqlen as i64
    }
}

/// A validated `mla_kv_quantize` call.
#[derive(Debug, Clone, Copy)]
pub struct MlaKvQuantizeCall<'a> {
    /// Latent rows [N, 576], run dtype. Contents not yet checked (must be finite).
    pub kv: &'a DeviceTensor,
    /// Op parameters (`kv_format` is `fp8_ds_v32`).
    pub params: &'a KvQuantizeParams,
    /// The run dtype (of kv).
    pub dtype: DType,
    /// N: rows.
    pub rows: usize,
    /// Validation marker.
    pub validated: Validated,
}

/// A validated `mla_cache_write` call.
#[derive(Debug, Clone, Copy)]
pub struct MlaCacheWriteCall<'a> {
    /// New latent rows `[N, Dqk]`, run dtype. Contents not yet checked (with `fp8_ds_v32`,
    /// the rows written must be finite).
    pub kv: &'a DeviceTensor,
    /// Flat cache slot of each row `[N]`, I32: `block * block_size + offset`, -1 = skip the
    /// row. Contents not yet checked (must be -1 or in [0, slots)).
    pub slot_mapping: &'a DeviceTensor,
    /// The caller's cache, written in place: `[num_blocks, block_size, 1, Dqk]` in the run
    /// dtype, or U8 `[num_blocks, block_size, 1, 656]` (`fp8_ds_v32`). It shares no buffer
    /// with `kv` or `slot_mapping`.
    pub kv_cache: &'a DeviceTensor,
    /// Op parameters.
    pub params: &'a CacheWriteParams,
    /// The run dtype (of kv).
    pub dtype: DType,
    /// N: rows.
    pub rows: usize,
    /// Dqk: values per row.
    pub d_qk: usize,
    /// Blocks of the cache.
    pub num_blocks: usize,
    /// Slots per block.
    pub block_size: usize,
    /// Validation marker.
    pub validated: Validated,
}

impl MlaCacheWriteCall<'_> {
    /// Cache slots: `num_blocks * block_size` (valid slots lie in [0, slots)).
    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// A validated `mla_sparse_decode` call.
#[derive(Debug, Clone, Copy)]
pub struct MlaSparseDecodeCall<'a> {
    /// Queries `[B, Sq, Hq, Dqk]`, run dtype.
    pub q: &'a DeviceTensor,
    /// Cache `[num_blocks, block_size, 1, Dqk]`, run dtype; with `kv_format` `fp8_ds_v32`:
    /// U8 `[num_blocks, block_size, 1, 656]`.
    pub kv_cache: &'a DeviceTensor,
    /// Attended slots `[B, Sq, topk]`, I32: `block * block_size + offset`, or -1. Contents
    /// not yet checked.
    pub indices: &'a DeviceTensor,
    /// Valid prefix length of each batch's index rows `[B]`, I32, if any. Contents not yet
    /// checked (must lie in [0, topk]).
    pub topk_length: Option<&'a DeviceTensor>,
    /// Attention sink per head `[Hq]`, F32, if any.
    pub attn_sink: Option<&'a DeviceTensor>,
    /// Op parameters.
    pub params: &'a SparseDecodeParams,
    /// The run dtype (of q).
    pub dtype: DType,
    /// B: batch.
    pub batch: usize,
    /// Sq: queries per sequence.
    pub s_q: usize,
    /// Hq: query heads.
    pub h_q: usize,
    /// Dqk: query/key width.
    pub d_qk: usize,
    /// Dv: value width (`params.head_dim_v`).
    pub d_v: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// topk: index entries per query.
    pub topk: usize,
    /// Validation marker.
    pub validated: Validated,
}

impl MlaSparseDecodeCall<'_> {
    /// Cache slots: `num_blocks * block_size` (valid indices lie in [0, slots)).
    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// A validated `dsa_indexer_topk` call.
#[derive(Debug, Clone, Copy)]
pub struct DsaIndexerTopkCall<'a> {
    /// Indexer queries `[B, Sq, Hi, Di]`, run dtype.
    pub q: &'a DeviceTensor,
    /// Per-head weights `[B, Sq, Hi]`, F32.
    pub weights: &'a DeviceTensor,
    /// Indexer keys `[num_blocks, block_size, Di]`, run dtype.
    pub k_cache: &'a DeviceTensor,
    /// Block table `[B, max_blocks]`, I32. Contents not yet checked.
    pub block_table: &'a DeviceTensor,
    /// Sequence lengths `[B]`, I32. Contents not yet checked.
    pub cache_seqlens: &'a DeviceTensor,
    /// Op parameters.
    pub params: &'a IndexerParams,
    /// The run dtype (of q and k_cache).
    pub dtype: DType,
    /// B: batch.
    pub batch: usize,
    /// Sq: queries per sequence.
    pub s_q: usize,
    /// Hi: indexer heads.
    pub h_i: usize,
    /// Di: indexer head width.
    pub d_i: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Validation marker.
    pub validated: Validated,
}

impl DsaIndexerTopkCall<'_> {
    /// Positions query `i` scores in a sequence of `seqlen` tokens (as
    /// [`MlaDecodeCall::attended_len`]); zero or less: none.
    pub fn attended_len(&self, seqlen: usize, i: usize) -> i64 {
        attended_len(self.params.causal, self.s_q, seqlen, i)
    }
}

/// The result of `dsa_indexer_topk`.
#[derive(Debug, Clone)]
pub struct DsaIndexerTopkOutput {
    /// Flat cache slots of the best positions [B, Sq, top_k], I32, by descending score;
    /// -1 past the attended positions.
    pub topk_indices: DeviceTensor,
    /// Their scores [B, Sq, top_k], F32 (-inf where the index is -1).
    pub topk_scores: DeviceTensor,
}
