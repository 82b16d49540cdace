//! aclnnGroupedMatmulV4 and aclnnSwiGlu.
//!
//! GroupedMatmulV4 (ops-transformer `gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md`):
//! `(aclTensorList *x, *weight, *biasOptional, *scaleOptional, *offsetOptional,
//! *antiquantScaleOptional, *antiquantOffsetOptional, *perTokenScaleOptional,
//! aclTensor *groupListOptional, aclTensorList *activationInputOptional,
//! *activationQuantScaleOptional, *activationQuantOffsetOptional, int64 splitItem,
//! int64 groupType, int64 groupListType, int64 actType, aclTensorList *out,
//! *activationFeatureOutOptional, *dynQuantScaleOutOptional, ...)`: y_i = x_i @ weight_i.
//! The emulator implements the MoE form: single x `[M, K]`, single weight `[E, K, N]`
//! (contiguous, or with its last two dims transposed — the documented "tensor转置"),
//! groupType 0 (m-axis), groupList INT64 `[E]` as cumsum (groupListType 0) or counts (1),
//! splitItem 2/3 (single out `[M, N]`), actType 0, non-quantised, x/weight/out one dtype.
//! Rows past the last group are not written.
//!
//! Limits, from `gmm/grouped_matmul/op_host/op_api/aclnn_grouped_matmul.cpp`
//! (SplitMSingleXSingleWeightSingleY, CheckShapeSameLengthTensorList,
//! CheckGroupListCommonTensor) and `gmm/grouped_matmul/README.md` (constraints: "x和weight中
//! 每一组tensor的最后一维大小都应小于65536", "group_list第1维最大支持1024"), all
//! ACLNN_ERR_PARAM_INVALID: x's K <= 65535 (MAX_INNER_AXIS); weight's N <= 65535 unless the
//! weight is transposed (then its last dim is K, already checked); groupList length <= 1024
//! (MAX_GROUP_LIST_SIZE_TENSOR).
//!
//! SwiGlu (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnSwiGlu.md>):
//! `(const aclTensor *x, int64_t dim, aclTensor *out, ...)`: x split in halves A, B along
//! `dim`, out = Swish(A) * B = A * sigmoid(A) * B.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{opt_tensor, tensor, tensor_list, AclTensor, AclTensorList};
use crate::status::{Fail, ACLNN_ERR_RUNTIME_ERROR};
use crate::tensor::{TensorDesc, DT_BF16, DT_F16, DT_F32, DT_I64};
use std::ffi::c_void;

/// aclnn_grouped_matmul.cpp MAX_INNER_AXIS: the largest last dim of x / weight.
const MAX_INNER_AXIS: usize = 65535;
/// aclnn_grouped_matmul.cpp MAX_GROUP_LIST_SIZE_TENSOR: the most groups a tensor groupList
/// may give.
const MAX_GROUP_LIST: usize = 1024;

fn single(list: *const AclTensorList, arg: &str) -> Result<TensorDesc, Fail> {
    let mut v = tensor_list(list, arg)?;
    if v.len() != 1 {
        return Err(Fail::invalid(format!(
            "emulator: `{arg}` must hold one tensor, got {}",
            v.len()
        )));
    }
    Ok(v.remove(0))
}

/// Whether `w` [E, K, N] is contiguous or transposed in its last two dims.
fn weight_layout_ok(w: &TensorDesc) -> bool {
    let (k, n) = (w.dims[1], w.dims[2]);
    w.is_contiguous() || (w.strides[0] == k * n && w.strides[1] == 1 && w.strides[2] == k)
}

/// First phase of aclnnGroupedMatmulV4.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnGroupedMatmulV4GetWorkspaceSize(
    x: *const AclTensorList,
    weight: *const AclTensorList,
    bias: *const AclTensorList,
    scale: *const AclTensorList,
    offset: *const AclTensorList,
    antiquant_scale: *const AclTensorList,
    antiquant_offset: *const AclTensorList,
    per_token_scale: *const AclTensorList,
    group_list: *const AclTensor,
    activation_input: *const AclTensorList,
    activation_quant_scale: *const AclTensorList,
    activation_quant_offset: *const AclTensorList,
    split_item: i64,
    group_type: i64,
    group_list_type: i64,
    act_type: i64,
    out: *const AclTensorList,
    activation_feature_out: *const AclTensorList,
    dyn_quant_scale_out: *const AclTensorList,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    let extras = [
        bias,
        scale,
        offset,
        antiquant_scale,
        antiquant_offset,
        per_token_scale,
        activation_input,
        activation_quant_scale,
        activation_quant_offset,
        activation_feature_out,
        dyn_quant_scale_out,
    ];
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnGroupedMatmulV4", workspace_size, executor, || {
            if extras.iter().any(|p| !p.is_null()) {
                return Err(Fail::invalid(
                    "emulator: non-quantised GMM without bias/activation inputs only",
                ));
            }
            if group_type != 0
                || !(2..=3).contains(&split_item)
                || act_type != 0
                || !(0..=1).contains(&group_list_type)
            {
                return Err(Fail::invalid(format!(
                    "emulator: groupType 0, splitItem 2|3, actType 0, groupListType 0|1 only \
                     (got {group_type}, {split_item}, {act_type}, {group_list_type})"
                )));
            }
            let a = single(x, "x")?;
            let w = single(weight, "weight")?;
            let y = single(out, "out")?;
            let groups = opt_tensor(group_list, "groupListOptional")?
                .ok_or_else(|| Fail::invalid("emulator: groupListOptional is required"))?;
            expect_dtype(&a, &[DT_F32, DT_F16, DT_BF16], "x")?;
            expect_dtype(&w, &[a.dtype], "weight (must match x)")?;
            expect_dtype(&y, &[a.dtype], "out (must match x)")?;
            expect_dtype(&groups, &[DT_I64], "groupListOptional")?;
            if a.dims.len() != 2 || w.dims.len() != 3 || w.dims[1] != a.dims[1] {
                return Err(Fail::invalid(format!(
                    "x [M, K] {:?} and weight [E, K, N] {:?} disagree",
                    a.dims, w.dims
                )));
            }
            if !a.is_contiguous() || !weight_layout_ok(&w) {
                return Err(Fail::invalid(
                    "x must be contiguous; weight contiguous or transposed in its last two dims",
                ));
            }
            let (m, kk, e, n) = (a.dims[0], a.dims[1], w.dims[0], w.dims[2]);
            // aclnn_grouped_matmul.cpp: the inner (last) axis of x, and of a weight that is
            // not transposed, at most MAX_INNER_AXIS.
            if kk > MAX_INNER_AXIS {
                return Err(Fail::invalid(format!(
                    "Dim 1 value of x[0] should less or equal to 65535, but now is {kk}."
                )));
            }
            if w.is_contiguous() && n > MAX_INNER_AXIS {
                return Err(Fail::invalid(format!(
                    "Dim 2 value of Weight[0] should less or equal to 65535, but now is {n}."
                )));
            }
            // aclnn_grouped_matmul.cpp CheckGroupListCommonTensor (V3/V4/V5).
            if groups.dims.first().copied().unwrap_or(0) > MAX_GROUP_LIST {
                return Err(Fail::invalid(format!(
                    "When groupList type is tensor, size of groupList {} should be less than \
                     or equal to {MAX_GROUP_LIST}.",
                    groups.dims[0]
                )));
            }
            expect_dims(&groups, &[e], "groupListOptional")?;
            expect_dims(&y, &[m, n], "out")?;
            Ok(Box::new(move || {
                let (av, wv, gv) = (a.load()?, w.load()?, groups.load()?);
                let mut yv = y.load()?;
                let mut start = 0usize;
                for (g, &v) in gv.iter().enumerate() {
                    let end = if group_list_type == 0 {
                        v
                    } else {
                        start as f64 + v
                    };
                    if end < start as f64 || end > m as f64 {
                        return Err(Fail::new(
                            ACLNN_ERR_RUNTIME_ERROR,
                            format!("groupList[{g}] = {v} is not a valid split of {m} rows"),
                        ));
                    }
                    let end = end as usize;
                    for r in start..end {
                        for c in 0..n {
                            let dot: f64 = (0..kk)
                                .map(|p| av[r * kk + p] * wv[(g * kk + p) * n + c])
                                .sum();
                            yv[r * n + c] = dot;
                        }
                    }
                    start = end;
                }
                y.store(&yv)
            }))
        })
    }
}
aclnn_launch!(aclnnGroupedMatmulV4);

/// First phase of aclnnSwiGlu.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnSwiGluGetWorkspaceSize(
    x: *const AclTensor,
    dim: i64,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnSwiGlu", workspace_size, executor, || {
            let x = tensor(x, "x")?;
            let y = tensor(out, "out")?;
            expect_dtype(&x, &[DT_F32, DT_F16, DT_BF16], "x")?;
            expect_dtype(&y, &[x.dtype], "out (must match x)")?;
            let rank = x.dims.len() as i64;
            if rank == 0 || (dim != -1 && dim != rank - 1) || x.dims[rank as usize - 1] % 2 != 0 {
                return Err(Fail::invalid(format!(
                    "emulator: split along the last dim (even) only, got dim {dim} of {:?}",
                    x.dims
                )));
            }
            let mut half_dims = x.dims.clone();
            let w = half_dims[rank as usize - 1] / 2;
            half_dims[rank as usize - 1] = w;
            expect_dims(&y, &half_dims, "out")?;
            Ok(Box::new(move || {
                let xv = x.load()?;
                let yv: Vec<f64> = xv
                    .chunks(2 * w)
                    .flat_map(|row| {
                        (0..w).map(move |i| {
                            let a = row[i];
                            a / (1.0 + (-a).exp()) * row[w + i]
                        })
                    })
                    .collect();
                y.store(&yv)
            }))
        })
    }
}
aclnn_launch!(aclnnSwiGlu);
