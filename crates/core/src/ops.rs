//! The v1 ops: validate against the contract, then dispatch to a backend.
//!
//! These functions are the only way to run an op: they check every shape, dtype and
//! parameter rule first, so all backends reject bad input identically, then check that the
//! backend returned what the contract promises.

use crate::calls::{MlaDecodeOutput, MoeRouteOutput};
use crate::validate::mla_decode::MlaArgs;
use crate::validate::moe_experts::ExpertsArgs;
use crate::validate::{
    mla_decode as mla_rules, moe_experts as experts_rules, moe_route as route_rules,
};
use crate::{
    Backend, DType, DeviceTensor, Error, ExpertsParams, MlaDecodeParams, Result, RouteParams,
};

/// DeepSeek MoE gating.
///
/// - `logits`: [T, E], F32 | F16 | BF16 (computed in f32).
/// - `bias`: optional [E], F32; steers selection only.
///
/// Returns `topk_ids` [T, top_k] I32 and `topk_weights` [T, top_k] F32.
pub fn moe_route(
    backend: &dyn Backend,
    logits: &DeviceTensor,
    bias: Option<&DeviceTensor>,
    params: &RouteParams,
) -> Result<MoeRouteOutput> {
    let call = route_rules::validate(backend.name(), logits, bias, params)?;
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
/// Returns `y` [T, H] in the run dtype.
pub fn moe_experts(
    backend: &dyn Backend,
    x: &DeviceTensor,
    w13: &DeviceTensor,
    w2: &DeviceTensor,
    topk_ids: &DeviceTensor,
    topk_weights: &DeviceTensor,
    params: &ExpertsParams,
) -> Result<DeviceTensor> {
    let args = ExpertsArgs {
        x,
        w13,
        w2,
        topk_ids,
        topk_weights,
    };
    let call = experts_rules::validate(backend.name(), args, params)?;
    let y = backend.moe_experts(&call)?;
    check_output(backend, "y", &y, &[call.tokens, call.hidden], call.dtype)?;
    Ok(y)
}

/// Absorbed MLA decode attention over a paged latent cache (FlashMLA semantics).
///
/// - `q`: [B, Sq, Hq, Dqk]; `kv_cache`: [num_blocks, block_size, Hkv, Dqk] — one run
///   dtype, F32 | F16 | BF16.
/// - `block_table`: [B, max_blocks] I32; `cache_seqlens`: [B] I32.
///
/// Returns `o` [B, Sq, Hq, Dv] in the run dtype and `lse` [B, Hq, Sq] F32.
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
    let out = backend.mla_decode(&call)?;
    let o_dims = [call.batch, call.s_q, call.h_q, call.d_v];
    check_output(backend, "o", &out.o, &o_dims, call.dtype)?;
    let lse_dims = [call.batch, call.h_q, call.s_q];
    check_output(backend, "lse", &out.lse, &lse_dims, DType::F32)?;
    Ok(out)
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
