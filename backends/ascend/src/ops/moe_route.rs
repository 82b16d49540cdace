//! moe_route -> (aclnnCast for F16/BF16 logits) + aclnnMoeGatingTopK, finished on the host.
//!
//! aclnnMoeGatingTopK (cited in `loader.rs`; its semantics, with the Huawei source of each,
//! in the emulator's `ops/moe_gating_top_k.rs`) computes DeepSeek gating. Where it differs
//! from the contract, this backend corrects it, so that it matches on hardware too:
//! - yOut is `y / (sum + eps) * routedScalingFactor` for sigmoid but NOT renormalised for
//!   softmax (ops-transformer `moe_gating_top_k_without_group.h` / `_generalized.h`
//!   SelectTopKExpertScore; vllm-ascend renormalises softmax after the call), and the
//!   contract divides by max(sum, 1e-20), not sum + eps. So yOut is not used: outFlag =
//!   true makes the op output the unbiased scores normOut `[T, E]`, and the host computes
//!   the weights `normOut[ids]` (/ max(sum, 1e-20) if renormalize) * routed_scaling_factor
//!   (`host.rs`). This costs one T x E f32 download per call (and forgoes the op's
//!   DeepSeek-V3 fast tiling, which needs outFlag false).
//! - NaN selection scores rank as -inf in the contract; CANN documents no NaN order for its
//!   Sort. Rows whose scores hold a NaN, and all rows when the bias holds a non-finite value
//!   (the grouped kernel pads groups with -inf, which a -inf score would tie with), get
//!   their ids from the contract's selection on the host (`host.rs`), from the same normOut.
//! - bias and yOut share x's dtype: logits are first cast to F32 (aclnnCast), so routing is
//!   computed in f32 with the F32 bias, as the contract says;
//! - hash routing (v2: `input_ids` + `tid2eid`, sigmoid or softmax scores): MoeGatingTopK
//!   has no table input, so its ids are not used: the tables are read back and checked
//!   (`moemla_core::indices::check_hash_routing`), `ids = tid2eid[input_ids]` is looked up on
//!   the host, and the weights are normOut at those ids, renormalised and scaled as above
//!   (`host::hash`); both are uploaded.
//! - the op's tiling limits (`moe_gating_top_k_tiling.cpp` CheckAttr) are checked first and
//!   reported as Unsupported: E <= 2048, and align32(E / n_group) * n_group <= 2048 only
//!   when groups are really selected (1 < n_group < E, topk_group < n_group).

mod host;

use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::loader::OpApi;
use crate::ops::{i32s, require_ops, unsupported};
use crate::AscendBackend;
use moemla_core::calls::{MoeRouteCall, MoeRouteOutput};
use moemla_core::{DType, GroupSelect, Op, Result, ScoreFunc};

/// The eps passed to aclnnMoeGatingTopK, its documented default (unused: yOut is ignored).
const EPS: f64 = 1e-20;
/// aclnnMoeGatingTopK's most experts (tiling MAX_EXPERT_COUNT).
const MAX_EXPERTS: usize = 2048;

/// Contract gaps, for `info().notes`.
pub const NOTES: [&str; 4] = [
    "moe_route sqrtsoftplus (v2): scores by aclnnSoftplus (beta 1, threshold 20) + aclnnSqrt in f32 on the device; selection (or the hash tables' ids) and weights on the host by the contract's rules (aclnnMoeGatingTopK has no sqrt-softplus normType)",
    "moe_route hash routing (v2, sigmoid/softmax scores): the tables are read back and checked, ids = tid2eid[input_ids] on the host, weights = aclnnMoeGatingTopK's normOut at those ids (its own selection unused)",
    "moe_route: aclnnMoeGatingTopK selects (F16/BF16 logits cast to F32 first); the weights are its normOut at the ids, renormalised by max(sum, 1e-20) and scaled on the host (the op renormalises only sigmoid, by sum + eps); rows with a NaN score, or all rows with a non-finite bias, are selected on the host by the contract's rules",
    "moe_route: Unsupported where aclnnMoeGatingTopK's tiling refuses: E > 2048; with real group selection (1 < n_group < E, topk_group < n_group) align32(E / n_group) * n_group > 2048",
];

/// Whether the loaded op libraries have what moe_route needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnMoeGatingTopK.is_some()
        && ops.aclnnMoeGatingTopKGetWorkspaceSize.is_some()
        && ops.aclnnCast.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
}

/// Whether the op really selects groups (its tiling's grouped case, GetTilingKey): with one
/// group, one expert per group, or every group kept, it takes the top-k over all experts.
fn grouped(call: &MoeRouteCall<'_>) -> bool {
    let p = call.params;
    p.n_group != 1 && p.n_group != call.experts && p.topk_group != p.n_group
}

fn check_limits(call: &MoeRouteCall<'_>) -> Result<()> {
    let p = call.params;
    let e = call.experts;
    if e > MAX_EXPERTS {
        return Err(unsupported(
            Op::MoeRoute,
            format!("E={e}"),
            "aclnnMoeGatingTopK supports at most 2048 experts",
        ));
    }
    let aligned = (e / p.n_group).div_ceil(32) * 32 * p.n_group;
    if grouped(call) && aligned > MAX_EXPERTS {
        return Err(unsupported(
            Op::MoeRoute,
            format!("n_group={} with {} experts per group", p.n_group, e / p.n_group),
            "aclnnMoeGatingTopK needs align32(E / n_group) * n_group <= 2048 when it selects groups",
        ));
    }
    Ok(())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Whether the loaded op libraries have what sqrt-softplus routing needs.
pub fn sqrtsoftplus_available(ops: &OpApi) -> bool {
    ops.aclnnCast.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
        && ops.aclnnSoftplus.is_some()
        && ops.aclnnSoftplusGetWorkspaceSize.is_some()
        && ops.aclnnSqrt.is_some()
        && ops.aclnnSqrtGetWorkspaceSize.is_some()
}

/// sqrt-softplus routing: s = aclnnSqrt(aclnnSoftplus(logits, beta 1, threshold 20)) in
/// f32 on the device (the contract's softplus: x above 20, else ln(1 + e^x)); selection
/// (or the hash tables' ids) and weights on the host (`host::select_all` / `host::hash`):
/// aclnnMoeGatingTopK has no sqrt-softplus normType.
fn sqrtsoftplus(
    be: &AscendBackend,
    call: &MoeRouteCall<'_>,
    tables: Option<(Vec<i32>, Vec<i32>)>,
) -> Result<MoeRouteOutput> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let p = call.params;
    let (t, e, k) = (call.tokens, call.experts, p.top_k);
    if i32::try_from(e).is_err() {
        return Err(unsupported(
            Op::MoeRoute,
            format!("E={e}"),
            "expert ids are I32",
        ));
    }
    require_ops(Op::MoeRoute, sqrtsoftplus_available(ops))?;
    let logits_mem = be.mem(call.logits, "moe_route", "logits")?;
    let x32 = dev.alloc(t * e * 4)?;
    let soft = dev.alloc(t * e * 4)?;
    let s = dev.alloc(t * e * 4)?;
    {
        let src = dev.tensor(logits_mem, &[t, e], None, 0, acl_dtype(call.logits.dtype()))?;
        let xt = dev.tensor(&x32, &[t, e], None, 0, ACL_FLOAT)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnCast",
            |ws, ex| unsafe {
                (ops.aclnnCastGetWorkspaceSize
                    .expect("checked by sqrtsoftplus_available()"))(
                    src.raw(),
                    ACL_FLOAT,
                    xt.raw(),
                    ws,
                    ex,
                )
            },
            ops.aclnnCast,
        )?;
        let beta = dev.scalar_f32(1.0)?;
        let threshold = dev.scalar_f32(20.0)?;
        let st = dev.tensor(&soft, &[t, e], None, 0, ACL_FLOAT)?;
        // SAFETY: as above.
        dev.run(
            "aclnnSoftplus",
            |ws, ex| unsafe {
                (ops.aclnnSoftplusGetWorkspaceSize
                    .expect("checked by sqrtsoftplus_available()"))(
                    xt.raw(),
                    beta.raw(),
                    threshold.raw(),
                    st.raw(),
                    ws,
                    ex,
                )
            },
            ops.aclnnSoftplus,
        )?;
        let out = dev.tensor(&s, &[t, e], None, 0, ACL_FLOAT)?;
        // SAFETY: as above.
        dev.run(
            "aclnnSqrt",
            |ws, ex| unsafe {
                (ops.aclnnSqrtGetWorkspaceSize
                    .expect("checked by sqrtsoftplus_available()"))(
                    st.raw(), out.raw(), ws, ex
                )
            },
            ops.aclnnSqrt,
        )?;
    }
    let scores = f32s(&dev.download_bytes(&s, t * e * 4)?);
    let (ids, weights) = match tables {
        Some((input_ids, tid2eid)) => host::hash(p, e, &scores, &input_ids, &tid2eid),
        None => {
            let bias = call
                .bias
                .map(|b| -> Result<Vec<f32>> {
                    let mem = be.mem(b, "moe_route", "bias")?;
                    Ok(f32s(&dev.download_bytes(mem, e * 4)?))
                })
                .transpose()?;
            host::select_all(p, e, &scores, bias.as_deref())
        }
    };
    let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let weights: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    Ok(MoeRouteOutput {
        topk_ids: be.wrap(dev.upload_bytes(&ids)?, [t, k], DType::I32),
        topk_weights: be.wrap(dev.upload_bytes(&weights)?, [t, k], DType::F32),
    })
}

/// Runs moe_route.
pub fn run(be: &AscendBackend, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    // Hash routing's tables, on the host: checked first (an input error comes before any
    // capability check), then looked up there (`host::hash`).
    let tables = match &call.hash {
        None => None,
        Some(h) => {
            let k = call.params.top_k;
            let read = |t: &moemla_core::DeviceTensor, arg, n: usize| -> Result<Vec<i32>> {
                let mem = be.mem(t, "moe_route", arg)?;
                Ok(i32s(&be.dev.download_bytes(mem, n * 4)?))
            };
            let input_ids = read(h.input_ids, "input_ids", call.tokens)?;
            let tid2eid = read(h.tid2eid, "tid2eid", h.vocab * k)?;
            moemla_core::indices::check_hash_routing(call, &input_ids, &tid2eid)?;
            Some((input_ids, tid2eid))
        }
    };
    if call.params.score_func == ScoreFunc::Sqrtsoftplus {
        return sqrtsoftplus(be, call, tables);
    }
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
    let y_out = dev.alloc(t * k * 4)?;
    let ids = dev.alloc(t * k * 4)?;
    let norm = dev.alloc(t * e * 4)?;
    {
        let x = dev.tensor(x_mem, &[t, e], None, 0, ACL_FLOAT)?;
        let bias = bias_mem
            .map(|m| dev.tensor(m, &[e], None, 0, ACL_FLOAT))
            .transpose()?;
        let y = dev.tensor(&y_out, &[t, k], None, 0, ACL_FLOAT)?;
        let idx = dev.tensor(&ids, &[t, k], None, 0, acl_dtype(DType::I32))?;
        let out = dev.tensor(&norm, &[t, e], None, 0, ACL_FLOAT)?;
        // A one-expert group's top-2 sum is its one score (the contract's reading, as on the
        // CPU backend), i.e. its max; the tiling refuses mode 1 below two experts per group.
        let group_select_mode = match p.group_select {
            GroupSelect::Top2Sum if e / p.n_group >= 2 => 1,
            _ => 0,
        };
        let norm_type = match p.score_func {
            ScoreFunc::Softmax => 0,
            ScoreFunc::Sigmoid => 1,
            // Taken by `sqrtsoftplus` before this point; never reached.
            ScoreFunc::Sqrtsoftplus => {
                return Err(unsupported(
                    Op::MoeRoute,
                    "sqrtsoftplus",
                    "aclnnMoeGatingTopK has no sqrt-softplus normType",
                ))
            }
        };
        let bias_raw = bias.as_ref().map_or(std::ptr::null_mut(), |b| b.raw());
        // SAFETY: handles live for the call; attribute values are the documented ones
        // (renorm 0, the only one the tiling accepts; outFlag true for normOut).
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
                    true,
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
    }
    // The host side (module doc): normOut, ids and bias back, the contract's weights (and,
    // where CANN's selection cannot be trusted, ids) up.
    let scores = f32s(&dev.download_bytes(&norm, t * e * 4)?);
    if let Some((input_ids, tid2eid)) = tables {
        // Hash routing: CANN's ids are not used; the table's are, with normOut's scores.
        let (ids, weights) = host::hash(p, e, &scores, &input_ids, &tid2eid);
        let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let weights: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        return Ok(MoeRouteOutput {
            topk_ids: be.wrap(dev.upload_bytes(&ids)?, [t, k], DType::I32),
            topk_weights: be.wrap(dev.upload_bytes(&weights)?, [t, k], DType::F32),
        });
    }
    let mut host_ids = i32s(&dev.download_bytes(&ids, t * k * 4)?);
    let bias = bias_mem
        .map(|m| dev.download_bytes(m, e * 4).map(|b| f32s(&b)))
        .transpose()?;
    let (weights, recomputed) = host::finish(p, e, &scores, bias.as_deref(), &mut host_ids)?;
    let weights: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ids = if recomputed {
        let bytes: Vec<u8> = host_ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        dev.upload_bytes(&bytes)?
    } else {
        ids
    };
    Ok(MoeRouteOutput {
        topk_ids: be.wrap(ids, [t, k], DType::I32),
        topk_weights: be.wrap(dev.upload_bytes(&weights)?, [t, k], DType::F32),
    })
}
