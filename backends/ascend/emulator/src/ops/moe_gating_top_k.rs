//! aclnnMoeGatingTopK, as documented in
//! https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/850alpha002/API/aolapi/context/aclnnMoeGatingTopK.md
//! and ops-transformer `moe/moe_gating_top_k/docs/aclnnMoeGatingTopK.md`:
//!
//! `aclnnMoeGatingTopKGetWorkspaceSize(const aclTensor *x, const aclTensor *biasOptional,
//! int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode, int64_t renorm,
//! int64_t normType, bool outFlag, double routedScalingFactor, double eps,
//! const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut,
//! uint64_t *workspaceSize, aclOpExecutor **executor)`
//!
//! 1. normOut = SoftMax(x) (normType 0) or Sigmoid(x) (normType 1);
//! 2. selection value = normOut + bias (if given);
//! 3. if groupCount > 1: group score = max (groupSelectMode 0) or sum of the top 2
//!    (groupSelectMode 1); keep the kGroup best groups, other experts' values = -inf;
//! 4. expertIdxOut = top-k of the selection value; y = normOut at those experts (the bias
//!    only steers selection: "这里只需要expertIdxOut");
//! 5. yOut = y / (sum(y) + eps) * routedScalingFactor — always normalised.
//!
//! Constraints: x 2-D, FLOAT16/BFLOAT16/FLOAT32, E = x.shape[-1] <= 2048; bias [E] with x's
//! dtype; yOut x's dtype [T, k]; expertIdxOut INT32 [T, k]; outOut FLOAT32 [T, E];
//! groupCount > 0 divides E, E / groupCount > groupSelectMode, align32(E / groupCount) *
//! groupCount <= 2048; 1 <= kGroup <= groupCount; 1 <= k <= E / groupCount * kGroup;
//! renorm == 0 only. Tiling rejections return ACLNN_ERR_INNER_TILING_ERROR (561002).

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{opt_tensor, tensor, AclTensor};
use crate::status::{Fail, ACLNN_ERR_INNER_TILING_ERROR};
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I32};
use std::ffi::c_void;

/// Attributes of one call.
#[derive(Clone, Copy)]
struct Attrs {
    k: usize,
    k_group: usize,
    group_count: usize,
    group_select_mode: i64,
    norm_type: i64,
    out_flag: bool,
    scale: f64,
    eps: f64,
}

fn tiling(msg: String) -> Fail {
    Fail::new(ACLNN_ERR_INNER_TILING_ERROR, msg)
}

/// Indices of the `k` largest values, descending; ties go to the lower index.
fn top_indices(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

fn route_row(x: &[f64], bias: Option<&[f64]>, a: Attrs) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
    let norm: Vec<f64> = if a.norm_type == 0 {
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    } else {
        x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
    };
    let mut sel: Vec<f64> = match bias {
        Some(b) => norm.iter().zip(b).map(|(n, b)| n + b).collect(),
        None => norm.clone(),
    };
    if a.group_count > 1 {
        let width = sel.len() / a.group_count;
        let scores: Vec<f64> = sel
            .chunks(width)
            .map(|g| {
                let top = top_indices(g, 2);
                if a.group_select_mode == 0 {
                    g[top[0]]
                } else {
                    top.iter().map(|&i| g[i]).sum()
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
    let y: Vec<f64> = ids.iter().map(|&i| norm[i]).collect();
    let sum: f64 = y.iter().sum();
    let y_out = y.iter().map(|v| v / (sum + a.eps) * a.scale).collect();
    (y_out, ids, norm)
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
            let x = tensor(x, "x")?;
            let bias = opt_tensor(bias_optional, "biasOptional")?;
            let y = tensor(y_out, "yOut")?;
            let ids = tensor(expert_idx_out, "expertIdxOut")?;
            let norm = tensor(out_out, "outOut")?;
            let floats = [DT_F32, DT_F16, DT_BF16];
            expect_dtype(&x, &floats, "x")?;
            expect_dtype(&y, &[x.dtype], "yOut (must match x)")?;
            expect_dtype(&ids, &[DT_I32], "expertIdxOut")?;
            expect_dtype(&norm, &[DT_F32], "outOut")?;
            if x.dims.len() != 2 {
                return Err(tiling(format!("x must be 2-D, got {:?}", x.dims)));
            }
            let (t, e) = (x.dims[0], x.dims[1]);
            if let Some(b) = &bias {
                expect_dtype(b, &[x.dtype], "biasOptional (must match x)")?;
                if b.dims != [e] {
                    return Err(tiling(format!("bias shape {:?} must be [{e}]", b.dims)));
                }
            }
            if e > 2048 {
                return Err(tiling(format!("expert count {e} > 2048")));
            }
            if renorm != 0 || !(0..=1).contains(&norm_type) || !(0..=1).contains(&group_select_mode)
            {
                return Err(Fail::invalid(format!(
                    "renorm must be 0 (got {renorm}), normType 0|1 (got {norm_type}), \
                     groupSelectMode 0|1 (got {group_select_mode})"
                )));
            }
            let gc = usize::try_from(group_count).unwrap_or(0);
            if gc == 0 || e % gc != 0 || (e / gc) as i64 <= group_select_mode {
                return Err(tiling(format!(
                    "groupCount {group_count} must be > 0, divide {e}, and leave more than \
                     groupSelectMode ({group_select_mode}) experts per group"
                )));
            }
            if (e / gc).div_ceil(32) * 32 * gc > 2048 {
                return Err(tiling(format!(
                    "align32({}) * groupCount {gc} > 2048",
                    e / gc
                )));
            }
            let kg = usize::try_from(k_group).unwrap_or(0);
            let kk = usize::try_from(k).unwrap_or(0);
            if !(1..=gc).contains(&kg) || kk == 0 || kk > e / gc * kg {
                return Err(tiling(format!(
                    "need 1 <= kGroup ({k_group}) <= groupCount ({gc}) and 1 <= k ({k}) <= {}",
                    e / gc * kg
                )));
            }
            expect_dims(&y, &[t, kk], "yOut")?;
            expect_dims(&ids, &[t, kk], "expertIdxOut")?;
            expect_dims(&norm, &[t, e], "outOut")?;
            let attrs = Attrs {
                k: kk,
                k_group: kg,
                group_count: gc,
                group_select_mode,
                norm_type,
                out_flag,
                scale: routed_scaling_factor,
                eps,
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
