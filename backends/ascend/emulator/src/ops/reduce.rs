//! aclnnLogSumExp and aclnnSoftmax.
//!
//! aclnnLogSumExp: `aclnnLogSumExpGetWorkspaceSize(const aclTensor *self,
//! const aclIntArray *dim, bool keepDim, aclTensor *out, uint64_t *workspaceSize,
//! aclOpExecutor **executor)`; out = log(sum(exp(self), dim)), FLOAT/FLOAT16/BFLOAT16
//! (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnLogSumExp.md>).
//! The emulator reduces over the last dimension only (moemla's only use).
//!
//! aclnnSoftmax: `aclnnSoftmaxGetWorkspaceSize(const aclTensor *self, int64_t dim,
//! aclTensor *out, ...)`: out = exp(x - max) / sum(exp(x - max)) along `dim`;
//! FLOAT/FLOAT16/BFLOAT16, out self's shape
//! (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnSoftmax.md>).
//! The emulator takes the last dimension only. A row holding +inf gives NaN (inf - inf),
//! as the formula does; a row of -inf gives NaN (0 / 0).

use super::{aclnn_launch, expect_dims, expect_dtype, expect_float_unary};
use crate::executor::prepare;
use crate::handles::{int_array, tensor, AclIntArray, AclTensor};
use crate::status::Fail;
use crate::tensor::{DT_BF16, DT_F16, DT_F32};
use std::ffi::c_void;

/// First phase of aclnnLogSumExp.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnLogSumExpGetWorkspaceSize(
    self_: *const AclTensor,
    dim: *const AclIntArray,
    keep_dim: bool,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnLogSumExp", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let dims = int_array(dim, "dim")?;
            let y = tensor(out, "out")?;
            let floats = [DT_F32, DT_F16, DT_BF16];
            expect_dtype(&x, &floats, "self")?;
            expect_dtype(&y, &floats, "out")?;
            let rank = x.dims.len() as i64;
            if rank == 0 || dims.len() != 1 || (dims[0] != rank - 1 && dims[0] != -1) {
                return Err(Fail::invalid(format!(
                    "emulator: reduction over the last dimension only, got dim {dims:?} of rank {rank}"
                )));
            }
            let mut out_dims = x.dims.clone();
            let width = out_dims.pop().unwrap_or(1);
            if keep_dim {
                out_dims.push(1);
            }
            expect_dims(&y, &out_dims, "out")?;
            Ok(Box::new(move || {
                let v = x.load()?;
                let rows = v.len().checked_div(width).unwrap_or(y.numel());
                let lse: Vec<f64> = (0..rows)
                    .map(|r| {
                        let row = &v[r * width..(r + 1) * width];
                        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if max == f64::NEG_INFINITY {
                            return f64::NEG_INFINITY;
                        }
                        max + row.iter().map(|e| (e - max).exp()).sum::<f64>().ln()
                    })
                    .collect();
                y.store(&lse)
            }))
        })
    }
}
aclnn_launch!(aclnnLogSumExp);

/// First phase of aclnnSoftmax.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnSoftmaxGetWorkspaceSize(
    self_: *const AclTensor,
    dim: i64,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnSoftmax", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let y = tensor(out, "out")?;
            expect_float_unary(&x, &y)?;
            let rank = x.dims.len() as i64;
            if rank == 0 || (dim != rank - 1 && dim != -1) {
                return Err(Fail::invalid(format!(
                    "emulator: softmax over the last dimension only, got dim {dim} of rank {rank}"
                )));
            }
            let width = x.dims[x.dims.len() - 1];
            Ok(Box::new(move || {
                let v = x.load()?;
                let mut o = Vec::with_capacity(v.len());
                for row in v.chunks(width.max(1)) {
                    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = row.iter().map(|&a| (a - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    o.extend(e.iter().map(|a| a / z));
                }
                y.store(&o)
            }))
        })
    }
}
aclnn_launch!(aclnnSoftmax);
