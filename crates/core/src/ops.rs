//! The ops: validate against the contract, then dispatch to a backend.
//!
//! These functions are the only way to run an op: they check every shape, dtype and
//! parameter rule first, so all backends reject bad input identically; then they check that
//! the backend lists every v2 variant the call uses ([`Format`]; otherwise
//! [`Error::Unsupported`], before the backend sees the call); then that the backend
//! returned what the contract promises.
//!
//! Ops with optional inputs have a plain form (v1's signature) and a `_with` form taking an
//! inputs struct built with `new` and `with_*` methods:
//!
//! ```no_run
//! # fn demo(b: &dyn moemla_core::Backend, logits: &moemla_core::DeviceTensor,
//! #         ids: &moemla_core::DeviceTensor, table: &moemla_core::DeviceTensor)
//! #         -> moemla_core::Result<()> {
//! use moemla_core::ops::{self, RouteInputs};
//! let params = moemla_core::RouteParams {
//!     score_func: moemla_core::ScoreFunc::Sqrtsoftplus,
//!     ..moemla_core::RouteParams::deepseek_v2_lite()
//! };
//! let out = ops::moe_route_with(b, RouteInputs::new(logits).with_hash(ids, table), &params)?;
//! # Ok(()) }
//! ```

mod cache_write;
mod into;

pub use cache_write::mla_cache_write;
pub use into::{
    dsa_indexer_topk_into, mla_decode_into, mla_kv_quantize_into, mla_sparse_decode_into,
    moe_experts_into, moe_route_into,
};

use crate::calls::{DsaIndexerTopkOutput, MlaDecodeOutput, MoeExpertsCall, MoeRouteOutput};
use crate::validate::dsa_indexer_topk::IndexerArgs;
use crate::validate::mla_decode::MlaArgs;
use crate::validate::{
    dsa_indexer_topk as indexer_rules, mla_decode as mla_rules, mla_kv_quantize as quant_rules,
    mla_sparse_decode as sparse_rules, moe_experts as experts_rules, moe_route as route_rules,
};
use crate::{
    ActivationQuant, Backend, DType, DeviceTensor, Error, ExpertWeight, ExpertsParams, Format,
    IndexerParams, KvFormat, KvQuantizeParams, MlaDecodeParams, Op, OpSupport, Result, RouteParams,
    ScoreFunc, SparseDecodeParams,
};

/// The tensors of a `moe_route` call.
#[derive(Clone, Copy, Debug)]
pub struct RouteInputs<'a> {
    /// Router logits `[T, E]`, F32 | F16 | BF16.
    pub logits: &'a DeviceTensor,
    /// Selection bias `[E]`, F32 (optional; never with hash routing).
    pub bias: Option<&'a DeviceTensor>,
    /// Hash routing: token ids `[T]`, I32 (with `tid2eid`).
    pub input_ids: Option<&'a DeviceTensor>,
    /// Hash routing: expert ids per token id `[vocab, top_k]`, I32 (with `input_ids`).
    pub tid2eid: Option<&'a DeviceTensor>,
}

impl<'a> RouteInputs<'a> {
    /// Logits only: no bias, top-k routing.
    pub fn new(logits: &'a DeviceTensor) -> Self {
        RouteInputs {
            logits,
            bias: None,
            input_ids: None,
            tid2eid: None,
        }
    }

    /// With a selection bias.
    pub fn with_bias(self, bias: &'a DeviceTensor) -> Self {
        RouteInputs {
            bias: Some(bias),
            ..self
        }
    }

    /// With hash routing (DeepSeek-V4): `ids[t] = tid2eid[input_ids[t]]`.
    pub fn with_hash(self, input_ids: &'a DeviceTensor, tid2eid: &'a DeviceTensor) -> Self {
        RouteInputs {
            input_ids: Some(input_ids),
            tid2eid: Some(tid2eid),
            ..self
        }
    }
}

/// The tensors of a `moe_experts` call.
#[derive(Clone, Copy, Debug)]
pub struct ExpertsInputs<'a> {
    /// Tokens [T, H], run dtype (F32 | F16 | BF16).
    pub x: &'a DeviceTensor,
    /// Gate and up projections [E, 2I, H], run dtype or F8E4M3.
    pub w13: &'a DeviceTensor,
    /// Down projections [E, H, I], the dtype of `w13`.
    pub w2: &'a DeviceTensor,
    /// Expert per token and slot [T, k], I32 in [-1, E).
    pub topk_ids: &'a DeviceTensor,
    /// Weights [T, k], F32.
    pub topk_weights: &'a DeviceTensor,
    /// Block scales of FP8 `w13` [E, ceil(2I/128), ceil(H/128)], F32.
    pub w13_scale: Option<&'a DeviceTensor>,
    /// Block scales of FP8 `w2` [E, ceil(H/128), ceil(I/128)], F32.
    pub w2_scale: Option<&'a DeviceTensor>,
    /// Shared experts' gate and up projections [S, 2Is, H], run dtype (with `shared_w2`).
    pub shared_w13: Option<&'a DeviceTensor>,
    /// Shared experts' down projections [S, H, Is], run dtype (with `shared_w13`).
    pub shared_w2: Option<&'a DeviceTensor>,
}

impl<'a> ExpertsInputs<'a> {
    /// Run-dtype weights (no scales).
    pub fn new(
        x: &'a DeviceTensor,
        w13: &'a DeviceTensor,
        w2: &'a DeviceTensor,
        topk_ids: &'a DeviceTensor,
        topk_weights: &'a DeviceTensor,
    ) -> Self {
        ExpertsInputs {
            x,
            w13,
            w2,
            topk_ids,
            topk_weights,
            w13_scale: None,
            w2_scale: None,
            shared_w13: None,
            shared_w2: None,
        }
    }

    /// With the block scales of F8E4M3 weights (the checkpoint's `weight_scale_inv`).
    pub fn with_scales(self, w13_scale: &'a DeviceTensor, w2_scale: &'a DeviceTensor) -> Self {
        ExpertsInputs {
            w13_scale: Some(w13_scale),
            w2_scale: Some(w2_scale),
            ..self
        }
    }

    /// With dense shared experts fused into the call (DeepSeek's `n_shared_experts`):
    /// `shared_w13` [S, 2Is, H] and `shared_w2` [S, H, Is] in the run dtype; each adds its
    /// SwiGLU FFN of `x[t]` with weight 1 to every token's `y`.
    pub fn with_shared(self, shared_w13: &'a DeviceTensor, shared_w2: &'a DeviceTensor) -> Self {
        ExpertsInputs {
            shared_w13: Some(shared_w13),
            shared_w2: Some(shared_w2),
            ..self
        }
    }
}

/// The tensors of an `mla_sparse_decode` call.
#[derive(Clone, Copy, Debug)]
pub struct SparseDecodeInputs<'a> {
    /// Queries `[B, Sq, Hq, Dqk]`, run dtype.
    pub q: &'a DeviceTensor,
    /// Cache `[num_blocks, block_size, 1, Dqk]` run dtype, or U8 `[.., 656]`
    /// (`fp8_ds_v32`).
    pub kv_cache: &'a DeviceTensor,
    /// Attended flat slots `[B, Sq, topk]`, I32 (-1: none).
    pub indices: &'a DeviceTensor,
    /// Valid prefix of each batch's index rows `[B]`, I32 (optional).
    pub topk_length: Option<&'a DeviceTensor>,
    /// Attention sink per head `[Hq]`, F32 (optional).
    pub attn_sink: Option<&'a DeviceTensor>,
}

impl<'a> SparseDecodeInputs<'a> {
    /// Queries, cache and indices; no length limit, no sink.
    pub fn new(q: &'a DeviceTensor, kv_cache: &'a DeviceTensor, indices: &'a DeviceTensor) -> Self {
        SparseDecodeInputs {
            q,
            kv_cache,
            indices,
            topk_length: None,
            attn_sink: None,
        }
    }

    /// With per-batch valid lengths of the index rows.
    pub fn with_topk_length(self, topk_length: &'a DeviceTensor) -> Self {
        SparseDecodeInputs {
            topk_length: Some(topk_length),
            ..self
        }
    }

    /// With an attention sink per head.
    pub fn with_attn_sink(self, attn_sink: &'a DeviceTensor) -> Self {
        SparseDecodeInputs {
            attn_sink: Some(attn_sink),
            ..self
        }
    }
}

/// DeepSeek MoE gating (top-k routing, no hash tables).
///
/// - `logits`: `[T, E]`, F32 | F16 | BF16 (computed in f32).
/// - `bias`: optional `[E]`, F32; steers selection only.
///
/// Returns `topk_ids` `[T, top_k]` I32 and `topk_weights` `[T, top_k]` F32. For hash
/// routing use [`moe_route_with`].
pub fn moe_route(
    backend: &dyn Backend,
    logits: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    params: &RouteParams,
) -> Result<MoeRouteOutput> {
    let mut inputs = RouteInputs::new(logits);
    inputs.bias = bias;
    moe_route_with(backend, inputs, params)
}

/// DeepSeek MoE gating with every v2 input: top-k routing (optionally biased), or hash
/// routing (`input_ids` + `tid2eid`; no bias, groups 1/1/"max").
pub fn moe_route_with(
    backend: &dyn Backend,
    inputs: RouteInputs<'_>,
    params: &RouteParams,
) -> Result<MoeRouteOutput> {
    let call = route_rules::validate(backend.name(), inputs, params)?;
    let mut formats = Vec::new();
    if params.score_func == ScoreFunc::Sqrtsoftplus {
        formats.push(Format::Sqrtsoftplus);
    }
    if call.hash.is_some() {
        formats.push(Format::HashRouting);
    }
    require(backend, Op::MoeRoute, call.logits.dtype(), &formats)?;
    let out = backend.moe_route(&call)?;
    let dims = [call.tokens, params.top_k];
    check_output(backend, "topk_ids", &out.topk_ids, &dims, DType::I32)?;
    check_output(
        backend,
        "topk_weights",
        &out.topk_weights,
        &dims,
        DType::F32,
    )?;
    Ok(out)
}

/// Fused routed experts: `y[t] = sum_j w[t,j] * W2[e] @ (silu(W1[e] x[t]) * W3[e] x[t])`.
///
/// - `x`: [T, H]; `w13`: [E, 2I, H]; `w2`: [E, H, I] — one run dtype, F32 | F16 | BF16.
/// - `topk_ids`: [T, k] I32 in [-1, E) (-1 = no expert); `topk_weights`: [T, k] F32.
///
/// Returns `y` [T, H] in the run dtype. For FP8 weights use [`moe_experts_with`].
pub fn moe_experts(
    backend: &dyn Backend,
    x: &DeviceTensor,
    w13: &DeviceTensor,
    w2: &DeviceTensor,
    topk_ids: &DeviceTensor,
    topk_weights: &DeviceTensor,
    params: &ExpertsParams,
) -> Result<DeviceTensor> {
    let inputs = ExpertsInputs::new(x, w13, w2, topk_ids, topk_weights);
    moe_experts_with(backend, inputs, params)
}

/// Fused routed experts with every v2 input: run-dtype weights, or F8E4M3 weights with
/// their block scales (w8a16, or w8a8 with `activation_quant` `fp8_block128`), an
/// optional `swiglu_limit`, and optional dense shared experts (run-dtype weights only),
/// which every token goes through with weight 1 in the same call. Returns `y` [T, H] in
/// the run dtype (that of `x`).
pub fn moe_experts_with(
    backend: &dyn Backend,
    inputs: ExpertsInputs<'_>,
    params: &ExpertsParams,
) -> Result<DeviceTensor> {
    let call = experts_rules::validate(backend.name(), inputs, params)?;
    require(backend, Op::MoeExperts, call.dtype, &experts_formats(&call))?;
    let y = backend.moe_experts(&call)?;
    check_output(backend, "y", &y, &[call.tokens, call.hidden], call.dtype)?;
    Ok(y)
}

/// An expert weight tensor laid out once, at load, for `backend`'s `moe_experts` kernels
/// (see [`Backend::pack_expert_weights`]): `w` is `w13` or `shared_w13` `[E, 2I, H]`
/// ([`ExpertWeight::GateUp`]) or `w2` or `shared_w2` `[E, H, I]` ([`ExpertWeight::Down`]),
/// in a float dtype or F8E4M3. The result has `w`'s shape and dtype; pass it to
/// `moe_experts` in `w`'s place and drop `w`. Backends whose kernels read the contract's
/// layout return `w` itself; the CPU backend lays F32 weights out in panels of 16 rows
/// where it has AVX-512 (pack both weights of a call, or neither). Fails as `moe_experts`
/// would on a tensor of the wrong backend, rank, dtype or shape.
///
/// ```no_run
/// # fn demo(b: &dyn moemla_core::Backend, w13: moemla_core::DeviceTensor,
/// #         w2: moemla_core::DeviceTensor) -> moemla_core::Result<()> {
/// use moemla_core::{ops, ExpertWeight};
/// let w13 = ops::pack_expert_weights(b, &w13, ExpertWeight::GateUp)?;
/// let w2 = ops::pack_expert_weights(b, &w2, ExpertWeight::Down)?;
/// # let _ = (w13, w2); Ok(()) }
/// ```
pub fn pack_expert_weights(
    backend: &dyn Backend,
    w: &DeviceTensor,
    kind: ExpertWeight,
) -> Result<DeviceTensor> {
    experts_rules::packable(backend.name(), w, kind)?;
    let packed = backend.pack_expert_weights(w, kind)?;
    check_output(backend, kind.arg(), &packed, w.dims(), w.dtype())?;
    Ok(packed)
}

/// Absorbed MLA decode attention over a paged latent cache (FlashMLA semantics).
///
/// - `q`: `[B, Sq, Hq, Dqk]`; `kv_cache`: `[num_blocks, block_size, Hkv, Dqk]` — one run
///   dtype, F32 | F16 | BF16. With `kv_format` `fp8_ds_v32`: `q` F16 | BF16 with Dqk 576,
///   `kv_cache` U8 `[num_blocks, block_size, 1, 656]`, `head_dim_v` 512.
/// - `block_table`: `[B, max_blocks]` I32; `cache_seqlens`: `[B]` I32.
///
/// Returns `o` `[B, Sq, Hq, Dv]` in the run dtype and `lse` `[B, Hq, Sq]` F32.
pub fn mla_decode(
    backend: &dyn Backend,
    q: &DeviceTensor,
    kv_cache: &DeviceTensor,
    block_table: &DeviceTensor,
    cache_seqlens: &DeviceTensor,
    params: &MlaDecodeParams,
) -> Result<MlaDecodeOutput> {
    let args = MlaArgs {
        q,
        kv_cache,
        block_table,
        cache_seqlens,
    };
    let call = mla_rules::validate(backend.name(), args, params)?;
    require(
        backend,
        Op::MlaDecode,
        call.dtype,
        cache_formats(params.kv_format),
    )?;
    let out = backend.mla_decode(&call)?;
    let o_dims = [call.batch, call.s_q, call.h_q, call.d_v];
    check_output(backend, "o", &out.o, &o_dims, call.dtype)?;
    let lse_dims = [call.batch, call.h_q, call.s_q];
    check_output(backend, "lse", &out.lse, &lse_dims, DType::F32)?;
    Ok(out)
}

/// Writes latent KV rows in the 656-byte FP8 cache layout (`kv_format` `fp8_ds_v32`).
///
/// - `kv`: [N, 576], F32 | F16 | BF16, finite (a non-finite value is an input error
///   naming the first bad row).
///
/// Returns `kv_fp8` [N, 656] U8 (see [`crate::fp8::quantize_ds_v32_row`]).
pub fn mla_kv_quantize(
    backend: &dyn Backend,
    kv: &DeviceTensor,
    params: &KvQuantizeParams,
) -> Result<DeviceTensor> {
    let call = quant_rules::validate(backend.name(), kv, params)?;
    require(backend, Op::MlaKvQuantize, call.dtype, &[Format::Fp8DsV32])?;
    let out = backend.mla_kv_quantize(&call)?;
    let dims = [call.rows, crate::fp8::DS_V32_ROW_BYTES];
    check_output(backend, "kv_fp8", &out, &dims, DType::U8)?;
    Ok(out)
}

/// DeepSeek Sparse Attention: MLA over the cache slots `indices` names (FlashMLA sparse
/// semantics; decode, MTP and prefill alike).
///
/// Returns `o` [B, Sq, Hq, Dv] in the run dtype and `lse` [B, Hq, Sq] F32 (an attention
/// sink scales `o` only).
pub fn mla_sparse_decode(
    backend: &dyn Backend,
    inputs: SparseDecodeInputs<'_>,
    params: &SparseDecodeParams,
) -> Result<MlaDecodeOutput> {
    let call = sparse_rules::validate(backend.name(), inputs, params)?;
    require(
        backend,
        Op::MlaSparseDecode,
        call.dtype,
        cache_formats(params.kv_format),
    )?;
    let out = backend.mla_sparse_decode(&call)?;
    let o_dims = [call.batch, call.s_q, call.h_q, call.d_v];
    check_output(backend, "o", &out.o, &o_dims, call.dtype)?;
    let lse_dims = [call.batch, call.h_q, call.s_q];
    check_output(backend, "lse", &out.lse, &lse_dims, DType::F32)?;
    Ok(out)
}

/// DeepSeek-V3.2's lightning indexer and its top-k over a paged cache:
/// `score(p) = sum_h weights[h] * max(0, q[h] . k_p)`, the `top_k` best positions as flat
/// cache slots, descending (-1 / -inf past the attended positions).
///
/// - `q`: `[B, Sq, Hi, Di]` and `k_cache`: `[num_blocks, block_size, Di]` — one run dtype;
///   `weights`: `[B, Sq, Hi]` F32; `block_table`: `[B, max_blocks]` I32; `cache_seqlens`:
///   `[B]` I32 (index rules of `mla_decode`).
///
/// Returns `topk_indices` `[B, Sq, top_k]` I32 (ready for [`mla_sparse_decode`]) and
/// `topk_scores` `[B, Sq, top_k]` F32.
pub fn dsa_indexer_topk(
    backend: &dyn Backend,
    q: &DeviceTensor,
    weights: &DeviceTensor,
    k_cache: &DeviceTensor,
    block_table: &DeviceTensor,
    cache_seqlens: &DeviceTensor,
    params: &IndexerParams,
) -> Result<DsaIndexerTopkOutput> {
    let args = IndexerArgs {
        q,
        weights,
        k_cache,
        block_table,
        cache_seqlens,
    };
    let call = indexer_rules::validate(backend.name(), args, params)?;
    let out = backend.dsa_indexer_topk(&call)?;
    let dims = [call.batch, call.s_q, params.top_k];
    check_output(
        backend,
        "topk_indices",
        &out.topk_indices,
        &dims,
        DType::I32,
    )?;
    check_output(backend, "topk_scores", &out.topk_scores, &dims, DType::F32)?;
    Ok(out)
}

/// The v2 formats a validated `moe_experts` call uses.
fn experts_formats(call: &MoeExpertsCall<'_>) -> Vec<Format> {
    let mut formats = Vec::new();
    if call.fp8_scales.is_some() {
        formats.push(Format::Fp8Weights);
    }
    if call.params.activation_quant == ActivationQuant::Fp8Block128 {
        formats.push(Format::Fp8Activations);
    }
    if call.params.swiglu_limit.is_some() {
        formats.push(Format::SwigluLimit);
    }
    if call.shared.is_some() {
        formats.push(Format::SharedExperts);
    }
    formats
}

/// The formats a cache layout needs.
fn cache_formats(format: KvFormat) -> &'static [Format] {
    match format {
        KvFormat::Dense => &[],
        KvFormat::Fp8DsV32 => &[Format::Fp8DsV32],
    }
}

/// The backend must list every v2 `format` the call uses for (`op`, `dtype`).
fn require(backend: &dyn Backend, op: Op, dtype: DType, formats: &[Format]) -> Result<()> {
    for &format in formats {
        if !backend.supports(&OpSupport::with_format(op, dtype, format)) {
            return Err(Error::Unsupported {
                backend: backend.name().to_string(),
                op,
                what: format!("{format} {dtype}"),
                reason: format!(
                    "the backend does not list {op} {dtype} {format} as supported (contract v2)"
                ),
            });
        }
    }
    Ok(())
}

/// A backend must return outputs of the contract's shape and dtype, on itself.
fn check_output(
    backend: &dyn Backend,
    name: &str,
    t: &DeviceTensor,
    dims: &[usize],
    dtype: DType,
) -> Result<()> {
    if t.dims() == dims && t.dtype() == dtype && t.backend() == backend.name() {
        return Ok(());
    }
    Err(Error::Device {
        backend: backend.name().to_string(),
        call: format!("output `{name}`"),
        message: format!(
            "backend returned {t:?}, the contract requires {dtype} {:?} on {}",
            dims,
            backend.name()
        ),
    })
}
