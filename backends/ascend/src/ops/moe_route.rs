//! moe_route -> (aclnnCast for F16/BF16 logits) + aclnnMoeGatingTopK.
//!
//! aclnnMoeGatingTopK (cited in `loader.rs`; semantics in the emulator's
//! `ops/moe_gating_top_k.rs`) computes DeepSeek gating, with these differences from the
//! contract, handled here:
//! - its weights are always `y / (sum(y) + eps) * routedScalingFactor`. With
//!   `renormalize=true` we pass eps = 1e-20, below f32 resolution for any weight sum above
//!   1e-12 (sigmoid/softmax top-k sums of real routers are far above that). With
//!   `renormalize=false` its weights are not used: outFlag = true makes it output the
//!   unbiased scores normOut [T, E], and the weights are aclnnGather(normOut, 1, ids) then
//!   aclnnMuls(routed_scaling_factor);
//! - bias and yOut share x's dtype: logits are first cast to F32 (aclnnCast), so routing is
//!   computed in f32 with the F32 bias and F32 weights, as the contract says;
//! - its limits (E <= 2048, E / n_group > 2, align32(E / n_group) * n_group <= 2048,
//!   top_k <= topk_group * E / n_group) are checked first and reported as Unsupported.

use crate::device::{acl_dtype, ACL_FLOAT};
use crate::loader::OpApi;
use crate::ops::{require_ops, unsupported};
use crate::AscendBackend;
use moemla_core::calls::{MoeRouteCall, MoeRouteOutput};
use moemla_core::{DType, GroupSelect, Op, Result, ScoreFunc};

/// The eps passed to aclnnMoeGatingTopK (see the module doc).
const EPS: f64 = 1e-20;

/// Contract gaps, for `info().notes`.
pub const NOTES: [&str; 2] = [
    "moe_route: aclnnMoeGatingTopK (F16/BF16 logits cast to F32 with aclnnCast first; eps = 1e-20); renormalize=false: weights from its normOut via aclnnGather + aclnnMuls (the op itself always renormalises)",
    "moe_route: Unsupported where aclnnMoeGatingTopK's limits are exceeded: E > 2048, E / n_group <= 2, align32(E / n_group) * n_group > 2048",
];

/// Whether the loaded op libraries have what moe_route needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnMoeGatingTopK.is_some()
        && ops.aclnnMoeGatingTopKGetWorkspaceSize.is_some()
        && ops.aclnnCast.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
        && ops.aclnnGather.is_some()
        && ops.aclnnGatherGetWorkspaceSize.is_some()
        && ops.aclnnMuls.is_some()
        && ops.aclnnMulsGetWorkspaceSize.is_some()
}

fn check_limits(call: &MoeRouteCall<'_>) -> Result<()> {
    let p = call.params;
    let e = call.experts;
    let per_group = e / p.n_group;
    let rule =
        |what: String, reason: &str| Err(unsupported(Op::MoeRoute, what, reason.to_string()));
    if e > 2048 {
        return rule(
            format!("E={e}"),
            "aclnnMoeGatingTopK supports at most 2048 experts",
        );
    }
    if per_group <= 2 {
        return rule(
            format!("E/n_group={per_group}"),
            "aclnnMoeGatingTopK needs more than 2 experts per group",
        );
    }
    if per_group.div_ceil(32) * 32 * p.n_group > 2048 {
        return rule(
            format!("n_group={} with {per_group} experts per group", p.n_group),
            "aclnnMoeGatingTopK needs align32(E / n_group) * n_group <= 2048",
        );
    }
    if p.top_k > per_group * p.topk_group {
        return rule(
            format!("top_k={}", p.top_k),
            "aclnnMoeGatingTopK needs top_k <= topk_group * E / n_group",
        );
    }
    Ok(())
}

/// Runs moe_route.
pub fn run(be: &AscendBackend, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    check_limits(call)?;
    require_ops(Op::MoeRoute, available(&be.dev.cann.ops))?;
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let p = call.params;
    let (t, e, k) = (call.tokens, call.experts, p.top_k);
    let logits_mem = be.mem(call.logits, "moe_route", "logits")?;
    let bias_mem = call
        .bias
        .map(|b| be.mem(b, "moe_route", "bias"))
        .transpose()?;

    // Routing runs in f32: cast F16/BF16 logits first.
    let x32 = if call.logits.dtype() == DType::F32 {
        None
    } else {
        let x32 = dev.alloc(t * e * 4)?;
        let src = dev.tensor(logits_mem, &[t, e], None, 0, acl_dtype(call.logits.dtype()))?;
        let dst = dev.tensor(&x32, &[t, e], None, 0, ACL_FLOAT)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnCast",
            |ws, ex| unsafe {
                (ops.aclnnCastGetWorkspaceSize
                    .expect("checked by available()"))(
                    src.raw(), ACL_FLOAT, dst.raw(), ws, ex
                )
            },
            ops.aclnnCast,
        )?;
        Some(x32)
    };
    let x_mem = x32.as_deref().unwrap_or(logits_mem);
    let weights = dev.alloc(t * k * 4)?;
    let ids = dev.alloc(t * k * 4)?;
    let norm = dev.alloc(t * e * 4)?;
    let x = dev.tensor(x_mem, &[t, e], None, 0, ACL_FLOAT)?;
    let bias = bias_mem
        .map(|m| dev.tensor(m, &[e], None, 0, ACL_FLOAT))
        .transpose()?;
    let y = dev.tensor(&weights, &[t, k], None, 0, ACL_FLOAT)?;
    let idx = dev.tensor(&ids, &[t, k], None, 0, acl_dtype(DType::I32))?;
    let out = dev.tensor(&norm, &[t, e], None, 0, ACL_FLOAT)?;
    let group_select_mode = match p.group_select {
        GroupSelect::Max => 0,
        GroupSelect::Top2Sum => 1,
    };
    let norm_type = match p.score_func {
        ScoreFunc::Softmax => 0,
        ScoreFunc::Sigmoid => 1,
    };
    let bias_raw = bias.as_ref().map_or(std::ptr::null_mut(), |b| b.raw());
    // SAFETY: handles live for the call; attribute values are the documented ones.
    dev.run(
        "aclnnMoeGatingTopK",
        |ws, ex| unsafe {
            (ops.aclnnMoeGatingTopKGetWorkspaceSize
                .expect("checked by available()"))(
                x.raw(),
                bias_raw,
                k as i64,
                p.topk_group as i64,
                p.n_group as i64,
                group_select_mode,
                0,
                norm_type,
                !p.renormalize,
                p.routed_scaling_factor,
                EPS,
                y.raw(),
                idx.raw(),
                out.raw(),
                ws,
                ex,
            )
        },
        ops.aclnnMoeGatingTopK,
    )?;
    if !p.renormalize {
        // Unnormalised weights: scale * normOut[t, ids[t, j]].
        let picked = dev.alloc(t * k * 4)?;
        let g = dev.tensor(&picked, &[t, k], None, 0, ACL_FLOAT)?;
        // SAFETY: handles live for the call; dim 1 gathers along the experts.
        dev.run(
            "aclnnGather",
            |ws, ex| unsafe {
                (ops.aclnnGatherGetWorkspaceSize
                    .expect("checked by available()"))(
                    out.raw(), 1, idx.raw(), g.raw(), ws, ex
                )
            },
            ops.aclnnGather,
        )?;
        let scale = dev.scalar_f32(p.routed_scaling_factor as f32)?;
        // SAFETY: as above.
        dev.run(
            "aclnnMuls",
            |ws, ex| unsafe {
                (ops.aclnnMulsGetWorkspaceSize
                    .expect("checked by available()"))(
                    g.raw(), scale.raw(), y.raw(), ws, ex
                )
            },
            ops.aclnnMuls,
        )?;
    }
    dev.synchronize()?;
    Ok(MoeRouteOutput {
        topk_ids: be.wrap(ids, [t, k], DType::I32),
        topk_weights: be.wrap(weights, [t, k], DType::F32),
    })
}
