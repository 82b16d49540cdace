//! aclnnMoeGatingTopK, following Huawei's own sources. Paths are in hicann/ops-transformer
//! (gitcode.com/cann/ops-transformer, mirrored on GitHub), under `moe/moe_gating_top_k/`;
//! each rule below names the file it comes from, so it can be re-checked there:
//!
//! - \[api\] `op_host/op_api/aclnn_moe_gating_top_k.cpp`: the signature
//!   `aclnnMoeGatingTopKGetWorkspaceSize(const aclTensor *x, const aclTensor *biasOptional,
//!   int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode, int64_t renorm,
//!   int64_t normType, bool outFlag, double routedScalingFactor, double eps,
//!   const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut,
//!   uint64_t *workspaceSize, aclOpExecutor **executor)`; null x/yOut/expertIdxOut/outOut is
//!   ACLNN_ERR_PARAM_NULLPTR, a dtype outside its lists ACLNN_ERR_PARAM_INVALID.
//! - \[tiling\] `op_host/moe_gating_top_k_tiling.cpp` (CheckInputShape, CheckOutShape,
//!   CheckAttr, GetTilingKey): every shape and attribute rule; a failure there is
//!   ACLNN_ERR_INNER_TILING_ERROR (the doc's return-code table,
//!   `docs/aclnnMoeGatingTopK.md`). routedScalingFactor and eps are read as float attrs.
//! - \[kernel\] `op_kernel/moe_gating_top_k_without_group.h` and
//!   `op_kernel/moe_gating_top_k_generalized.h` (SelectTopKExpertScore): yOut is divided by
//!   `sum + eps` only for normType 1 (sigmoid); softmax (normType 0) yOut is NOT
//!   renormalised, only scaled. The test golden `tests/assets/golden.py` says the same
//!   (`if normType != 0 or renorm != 0: y = y / (y.sum() + eps)`), and vllm-ascend
//!   renormalises softmax itself after the call (`vllm_ascend/device/device_op.py`,
//!   `if norm_type == 0 and renorm == 1`).
//! - \[sort\] ties: the Ascend C `Sort32` page ("当存在score\[i\]与score\[j\]相同时，如果i>j，则
//!   score\[j\]将首先被选出来") — the lower index comes first.
//!
//! NaN selection scores: no Huawei source says how the kernel's Sort / ReduceMax order a
//! NaN. The emulator ranks by IEEE totalOrder (`f64::total_cmp`: a positive NaN above
//! +inf), which is deliberately *not* moemla's rule (NaN ranks as -inf): a caller that needs
//! that rule must enforce it itself, as moemla-ascend does on the host.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{opt_tensor, tensor, AclTensor};
use crate::status::{Fail, ACLNN_ERR_INNER_TILING_ERROR};
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I32};
use std::ffi::c_void;

/// \[tiling\] MAX_EXPERT_COUNT.
const MAX_EXPERTS: usize = 2048;

/// Attributes of one call.
#[derive(Clone, Copy)]
struct Attrs {
    k: usize,
    k_group: usize,
    group_count: usize,
    /// \[tiling\] GetTilingKey: the grouped kernel runs only when groups are really selected
    /// (groupCount not 1, not E, kGroup < groupCount); otherwise the without-group kernel
    /// takes the top-k over all experts.
    grouped: bool,
    top2_sum: bool,
    sigmoid: bool,
    out_flag: bool,
    /// \[tiling\] read as a float attr.
    scale: f32,
    /// \[tiling\] read as a float attr.
    eps: f32,
}

fn tiling(msg: String) -> Fail {
    Fail::new(ACLNN_ERR_INNER_TILING_ERROR, msg)
}

/// Indices of the `k` largest values, descending; ties go to the lower index \[sort\]; NaN by
/// IEEE totalOrder (module doc).
fn top_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// One row: (yOut, expertIdxOut, normOut).
fn route_row(x: &[f64], bias: Option<&[f64]>, a: Attrs) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    // [kernel] normOut: sigmoid, or softmax as max-subtracted exp times 1 / sum (Muls).
    let norm: Vec<f64> = if a.sigmoid {
        x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
    } else {
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
        let inv = 1.0 / e.iter().sum::<f64>();
        e.iter().map(|v| v * inv).collect()
    };
    // [kernel] the bias only steers selection (Add into xNormWithBias; y gathers xNorm).
    let mut sel: Vec<f64> = match bias {
        Some(b) => norm.iter().zip(b).map(|(n, b)| n + b).collect(),
        None => norm.clone(),
    };
    if a.grouped {
        // [kernel] generalized.h SelectTopKGroupIndex: per group its best value (mode 0)
        // or the sum of its best two (mode 1, PairReduceSum); keep the kGroup best groups,
        // the others' values become -inf.
        let width = sel.len() / a.group_count;
        let scores: Vec<f64> = sel
            .chunks(width)
            .map(|g| {
                let top = top_indices(g, 2);
                if a.top2_sum {
                    top.iter().map(|&i| g[i]).sum()
                } else {
                    g[top[0]]
                }
            })
            .collect();
        let kept = top_indices(&scores, a.k_group);
        for (g, chunk) in sel.chunks_mut(width).enumerate() {
            if !kept.contains(&g) {
                chunk.fill(f64::NEG_INFINITY);
            }
        }
    }
    let ids = top_indices(&sel, a.k);
    // [kernel] SelectTopKExpertScore: y = normOut at the ids; only sigmoid divides by
    // sum + eps; both multiply by routedScalingFactor.
    let y: Vec<f64> = ids.iter().map(|&i| norm[i]).collect();
    let denom = if a.sigmoid {
        y.iter().sum::<f64>() + a.eps as f64
    } else {
        1.0
    };
    let y_out = y.iter().map(|v| v / denom * a.scale as f64).collect();
    (y_out, ids, norm)
}

/// The tiling's shape and attribute rules (\[tiling\] CheckInputShape, CheckOutShape,
/// CheckAttr, in that order), for x [t, e].
fn check_attrs(
    e: usize,
    k: i64,
    k_group: i64,
    group_count: i64,
    group_select_mode: i64,
    renorm: i64,
    norm_type: i64,
) -> Result<(usize, usize, usize), Fail> {
    if k > e as i64 {
        return Err(tiling(format!(
            "k is: {k}, expert num is: {e}, k cannot be greater than expert num."
        )));
    }
    if e > MAX_EXPERTS {
        return Err(tiling(format!(
            "expert count is: {e}, but should not greater than {MAX_EXPERTS}."
        )));
    }
    if k <= 0 || k_group <= 0 || k_group > group_count || group_count <= 0 {
        return Err(tiling(format!(
            "k ({k}) and k_group ({k_group}) must be > 0, k_group <= group_count \
             ({group_count}), group_count > 0"
        )));
    }
    if !(0..=1).contains(&norm_type) || !(0..=1).contains(&group_select_mode) || renorm != 0 {
        return Err(tiling(format!(
            "norm type ({norm_type}) must be 0 or 1, group select mode ({group_select_mode}) \
             0 or 1, renorm ({renorm}) 0"
        )));
    }
    let (k, kg, gc) = (k as usize, k_group as usize, group_count as usize);
    if !e.is_multiple_of(gc) {
        return Err(tiling(format!(
            "Expert count : {e} is not divisible by k_group: {gc}"
        )));
    }
    // The tiling's "perGroupExpertCount >= 1" cannot fail once gc divides e (e >= k >= 1);
    // the sum of the best two needs two experts per group.
    let per_group = e / gc;
    if group_select_mode == 1 && per_group < 2 {
        return Err(tiling(format!(
            "group expert count is: {per_group}, if group select mode is: 1, group expert \
             count should be greater than 1."
        )));
    }
    if k > kg * per_group {
        return Err(tiling(format!(
            "k is: {k}, but should be smaller than {}.",
            kg * per_group
        )));
    }
    // Only the grouped case checks the 32-aligned group width ("分组场景下才需要校验").
    let grouped = gc != 1 && gc != e && kg != gc;
    if grouped && per_group.div_ceil(32) * 32 * gc > MAX_EXPERTS {
        return Err(tiling(format!(
            "group count * group expert count align is: {}, but should not greater than \
             {MAX_EXPERTS}.",
            per_group.div_ceil(32) * 32 * gc
        )));
    }
    Ok((k, kg, gc))
}

/// First phase of aclnnMoeGatingTopK.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnMoeGatingTopKGetWorkspaceSize(
    x: *const AclTensor,
    bias_optional: *const AclTensor,
    k: i64,
    k_group: i64,
    group_count: i64,
    group_select_mode: i64,
    renorm: i64,
    norm_type: i64,
    out_flag: bool,
    routed_scaling_factor: f64,
    eps: f64,
    y_out: *const AclTensor,
    expert_idx_out: *const AclTensor,
    out_out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnMoeGatingTopK", workspace_size, executor, || {
            // [api] CheckNotNull (outOut included), then CheckDtypeValid.
            let x = tensor(x, "x")?;
            let bias = opt_tensor(bias_optional, "biasOptional")?;
            let y = tensor(y_out, "yOut")?;
            let ids = tensor(expert_idx_out, "expertIdxOut")?;
            let norm = tensor(out_out, "outOut")?;
            let floats = [DT_F32, DT_F16, DT_BF16];
            expect_dtype(&x, &floats, "x")?;
            if let Some(b) = &bias {
                expect_dtype(b, &[x.dtype], "biasOptional (must match x)")?;
            }
            expect_dtype(&y, &[x.dtype], "yOut (must match x)")?;
            expect_dtype(&ids, &[DT_I32], "expertIdxOut")?;
            expect_dtype(&norm, &[DT_F32], "outOut")?;
            // [tiling] CheckInputShape.
            if x.dims.len() != 2 {
                return Err(tiling(format!(
                    "The dim number of x is: {}, but should be 2.",
                    x.dims.len()
                )));
            }
            let (t, e) = (x.dims[0], x.dims[1]);
            if let Some(b) = &bias {
                if b.dims != [e] {
                    return Err(tiling(format!("bias shape {:?} must be [{e}]", b.dims)));
                }
            }
            let (kk, kg, gc) = check_attrs(
                e,
                k,
                k_group,
                group_count,
                group_select_mode,
                renorm,
                norm_type,
            )?;
            // [tiling] CheckOutShape: normOut's dims are only checked when it is output.
            expect_dims(&y, &[t, kk], "yOut")?;
            expect_dims(&ids, &[t, kk], "expertIdxOut")?;
            if out_flag {
                expect_dims(&norm, &[t, e], "outOut")?;
            }
            let attrs = Attrs {
                k: kk,
                k_group: kg,
                group_count: gc,
                grouped: gc != 1 && gc != e && kg != gc,
                top2_sum: group_select_mode == 1,
                sigmoid: norm_type == 1,
                out_flag,
                scale: routed_scaling_factor as f32,
                eps: eps as f32,
            };
            Ok(Box::new(move || {
                let xv = x.load()?;
                let bv = bias.as_ref().map(|b| b.load()).transpose()?;
                let (mut yv, mut iv, mut nv) = (Vec::new(), Vec::new(), Vec::new());
                for row in xv.chunks(e) {
                    let (w, i, n) = route_row(row, bv.as_deref(), attrs);
                    yv.extend(w);
                    iv.extend(i.into_iter().map(|i| i as f64));
                    nv.extend(n);
                }
                y.store(&yv)?;
                ids.store(&iv)?;
                if attrs.out_flag {
                    norm.store(&nv)?;
                }
                Ok(())
            }))
        })
    }
}
aclnn_launch!(aclnnMoeGatingTopK);
