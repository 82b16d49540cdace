//! aclnnMoeInitRoutingV2 and aclnnMoeFinalizeRoutingV2 (ops-transformer
//! `moe/moe_init_routing_v2/docs/aclnnMoeInitRoutingV2.md`,
//! `moe/moe_finalize_routing_v2/docs/aclnnMoeFinalizeRoutingV2.md`; the same pages under
//! <https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/>).
//! Paths below are in hicann/ops-transformer.
//!
//! InitRoutingV2 `(x, expertIdx, int64 activeNum, int64 expertCapacity, int64 expertNum,
//! int64 dropPadMode, int64 expertTokensCountOrCumsumFlag, bool
//! expertTokensBeforeCapacityFlag, expandedXOut, expandedRowIdxOut,
//! expertTokensCountOrCumsumOut, expertTokensBeforeCapacityOut, ...)`:
//! sort flatten(expertIdx) by expert (stable), `expandedRowIdxOut[sortedRowIdx[i]] = i`
//! (`moe/moe_init_routing_v2/README.md` formulas),
//! `expandedXOut[i] = x[sortedRowIdx[i] / k]`: the flattened index is row-major, token t's
//! slot j at t * k + j (`moe/moe_init_routing_v2/op_kernel/moe_v2_gather_out.h`: source row
//! `initialRow / k`; the README's `% numRows` is V1's column order),
//! expertTokensCountOrCumsumOut = cumsum (flag 1) or count (flag 2) of the histogram over
//! expertNum experts (`expertNum >= 0`, > 0 when counts are output:
//! `moe_init_routing_v2_tiling.cpp`); ids must lie in [0, expertNum - 1] when counts are
//! output. The emulator implements the dropless mode (dropPadMode 0, activeNum 0).
//!
//! FinalizeRoutingV2 `(expandedX, expandedRowIdx, x1Optional, x2Optional, biasOptional,
//! scalesOptional, expertIdxOptional, int64 dropPadMode, out, ...)`:
//! `out[i] = x1 + x2 + sum_k scales[i, k] * (expandedX[expandedRowIdx[...]] + bias[expert])`
//! (`moe/moe_finalize_routing_v2/README.md` formula): every slot's row is multiplied by its
//! scale, a 0 scale included. dropPadMode in [0, 3]; 0 and 2 are dropless with a 2-D
//! expandedX (`op_host/moe_finalize_routing_v2_infershape.cpp`), 0 reading expandedRowIdx
//! in column order (i + k * num_rows, the README formula) and 2 in InitRoutingV2's row
//! order, index i * K + k (`op_host/moe_finalize_routing_v2_tiling_arch35.cpp`,
//! DROPLESS_ROW). Scales share expandedX's dtype (BF16 expandedX may take F32 scales). The
//! emulator implements dropPadMode 2 without bias; x1Optional / x2Optional, when given, are
//! [N, H] in expandedX's dtype (the README's skip inputs) and added as the formula says.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{opt_tensor, tensor, AclTensor};
use crate::status::{Fail, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_RUNTIME_ERROR};
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I32};
use std::ffi::c_void;

/// First phase of aclnnMoeInitRoutingV2.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnMoeInitRoutingV2GetWorkspaceSize(
    x: *const AclTensor,
    expert_idx: *const AclTensor,
    active_num: i64,
    _expert_capacity: i64,
    expert_num: i64,
    drop_pad_mode: i64,
    count_or_cumsum_flag: i64,
    before_capacity_flag: bool,
    expanded_x_out: *const AclTensor,
    expanded_row_idx_out: *const AclTensor,
    count_out: *const AclTensor,
    _before_capacity_out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnMoeInitRoutingV2", workspace_size, executor, || {
            let x = tensor(x, "x")?;
            let ids = tensor(expert_idx, "expertIdx")?;
            let ex = tensor(expanded_x_out, "expandedXOut")?;
            let rows = tensor(expanded_row_idx_out, "expandedRowIdxOut")?;
            let counts = opt_tensor(count_out, "expertTokensCountOrCumsumOut")?;
            expect_dtype(&x, &[DT_F32, DT_F16, DT_BF16], "x")?;
            expect_dtype(&ids, &[DT_I32], "expertIdx")?;
            expect_dtype(&ex, &[x.dtype], "expandedXOut (must match x)")?;
            expect_dtype(&rows, &[DT_I32], "expandedRowIdxOut")?;
            if x.dims.len() != 2 || ids.dims.len() != 2 || x.dims[0] != ids.dims[0] {
                return Err(Fail::new(
                    ACLNN_ERR_INNER_TILING_ERROR,
                    format!(
                        "x {:?} and expertIdx {:?} must be 2-D with equal rows",
                        x.dims, ids.dims
                    ),
                ));
            }
            if drop_pad_mode != 0 || active_num != 0 || before_capacity_flag {
                return Err(Fail::invalid(
                    "emulator: dropless mode only (dropPadMode 0, activeNum 0, no before-capacity output)",
                ));
            }
            if !(0..=2).contains(&count_or_cumsum_flag)
                || (count_or_cumsum_flag > 0 && expert_num <= 0)
            {
                return Err(Fail::new(
                    ACLNN_ERR_INNER_TILING_ERROR,
                    format!("expertTokensCountOrCumsumFlag {count_or_cumsum_flag} with expertNum {expert_num}"),
                ));
            }
            let (n, h, k) = (x.dims[0], x.dims[1], ids.dims[1]);
            expect_dims(&ex, &[n * k, h], "expandedXOut")?;
            expect_dims(&rows, &[n * k], "expandedRowIdxOut")?;
            let e = expert_num.max(0) as usize;
            let counts = match (count_or_cumsum_flag, counts) {
                (0, _) => None,
                (_, None) => {
                    return Err(Fail::new(
                        161001,
                        "expertTokensCountOrCumsumOut is required by the flag",
                    ))
                }
                (_, Some(c)) => {
                    expect_dtype(&c, &[DT_I32], "expertTokensCountOrCumsumOut")?;
                    expect_dims(&c, &[e], "expertTokensCountOrCumsumOut")?;
                    Some(c)
                }
            };
            Ok(Box::new(move || {
                let idv = ids.load()?;
                if counts.is_some() {
                    if let Some(bad) = idv.iter().position(|&v| !(0.0..e as f64).contains(&v)) {
                        return Err(Fail::new(
                            ACLNN_ERR_RUNTIME_ERROR,
                            format!("expertIdx[{bad}] = {} is outside [0, {e})", idv[bad]),
                        ));
                    }
                }
                let mut order: Vec<usize> = (0..n * k).collect();
                order.sort_by(|&a, &b| idv[a].total_cmp(&idv[b]).then(a.cmp(&b)));
                let xv = x.load()?;
                let mut expanded = Vec::with_capacity(n * k * h);
                let mut row_idx = vec![0.0; n * k];
                for (i, &src) in order.iter().enumerate() {
                    row_idx[src] = i as f64;
                    expanded.extend_from_slice(&xv[(src / k) * h..(src / k + 1) * h]);
                }
                ex.store(&expanded)?;
                rows.store(&row_idx)?;
                if let Some(c) = &counts {
                    let mut hist = vec![0.0; e];
                    idv.iter().for_each(|&v| hist[v as usize] += 1.0);
                    if count_or_cumsum_flag == 1 {
                        for i in 1..e {
                            hist[i] += hist[i - 1];
                        }
                    }
                    c.store(&hist)?;
                }
                Ok(())
            }))
        })
    }
}
aclnn_launch!(aclnnMoeInitRoutingV2);

/// First phase of aclnnMoeFinalizeRoutingV2.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnMoeFinalizeRoutingV2GetWorkspaceSize(
    expanded_x: *const AclTensor,
    expanded_row_idx: *const AclTensor,
    x1: *const AclTensor,
    x2: *const AclTensor,
    bias: *const AclTensor,
    scales: *const AclTensor,
    _expert_idx: *const AclTensor,
    drop_pad_mode: i64,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare(
            "aclnnMoeFinalizeRoutingV2",
            workspace_size,
            executor,
            || {
                let ex = tensor(expanded_x, "expandedX")?;
                let rows = tensor(expanded_row_idx, "expandedRowIdx")?;
                let scales = opt_tensor(scales, "scalesOptional")?;
                let y = tensor(out, "out")?;
                let skips = [opt_tensor(x1, "x1Optional")?, opt_tensor(x2, "x2Optional")?];
                if !bias.is_null() || drop_pad_mode != 2 {
                    return Err(Fail::invalid("emulator: dropPadMode 2 without bias only"));
                }
                expect_dtype(&ex, &[DT_F32, DT_F16, DT_BF16], "expandedX")?;
                expect_dtype(&rows, &[DT_I32], "expandedRowIdx")?;
                expect_dtype(&y, &[ex.dtype], "out (must match expandedX)")?;
                if ex.dims.len() != 2 || y.dims.len() != 2 || ex.dims[1] != y.dims[1] {
                    return Err(Fail::new(
                        ACLNN_ERR_INNER_TILING_ERROR,
                        "expandedX [N*K, H] and out [N, H] disagree",
                    ));
                }
                let (n, h) = (y.dims[0], y.dims[1]);
                let k = match &scales {
                    Some(s) => {
                        let mixed = ex.dtype == DT_BF16 && s.dtype == DT_F32;
                        if !mixed {
                            expect_dtype(s, &[ex.dtype], "scalesOptional (must match expandedX)")?;
                        }
                        if s.dims.len() != 2 || s.dims[0] != n {
                            return Err(Fail::new(
                                ACLNN_ERR_INNER_TILING_ERROR,
                                "scales must be [N, K]",
                            ));
                        }
                        s.dims[1]
                    }
                    None => 1,
                };
                expect_dims(&ex, &[n * k, h], "expandedX")?;
                expect_dims(&rows, &[n * k], "expandedRowIdx")?;
                for (skip, arg) in skips.iter().zip(["x1Optional", "x2Optional"]) {
                    if let Some(t) = skip {
                        expect_dtype(t, &[ex.dtype], arg)?;
                        expect_dims(t, &[n, h], arg)?;
                    }
                }
                Ok(Box::new(move || {
                    let (xv, rv) = (ex.load()?, rows.load()?);
                    let sv = match &scales {
                        Some(s) => s.load()?,
                        None => vec![1.0; n],
                    };
                    let mut yv = vec![0.0; n * h];
                    for skip in skips.iter().flatten() {
                        for (acc, v) in yv.iter_mut().zip(skip.load()?) {
                            *acc += v;
                        }
                    }
                    for i in 0..n {
                        for j in 0..k {
                            let r = rv[i * k + j];
                            if !(0.0..(n * k) as f64).contains(&r) {
                                return Err(Fail::new(
                                    ACLNN_ERR_RUNTIME_ERROR,
                                    format!(
                                        "expandedRowIdx[{}] = {r} is outside [0, {})",
                                        i * k + j,
                                        n * k
                                    ),
                                ));
                            }
                            let row = &xv[r as usize * h..(r as usize + 1) * h];
                            for (acc, v) in yv[i * h..(i + 1) * h].iter_mut().zip(row) {
                                *acc += sv[i * k + j] * v;
                            }
                        }
                    }
                    y.store(&yv)
                }))
            },
        )
    }
}
aclnn_launch!(aclnnMoeFinalizeRoutingV2);
