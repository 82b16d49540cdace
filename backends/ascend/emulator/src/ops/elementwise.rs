//! aclnnCast, aclnnInplaceCopy, aclnnMuls, aclnnInplaceZero, aclnnClamp, aclnnSoftplus,
//! aclnnSqrt.
//!
//! - `aclnnCastGetWorkspaceSize(const aclTensor *self, const aclDataType dtype,
//!   aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`: out = self
//!   converted to `dtype` (out's dtype), same shape
//!   (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnCast.md>).
//! - `aclnnInplaceCopyGetWorkspaceSize(aclTensor *selfRef, const aclTensor *src, ...)`:
//!   selfRef = src, converting dtype; non-contiguous views allowed on both sides
//!   (.../aolapi/context/aclnnInplaceCopy.md). The emulator requires equal shapes (CANN
//!   also broadcasts; moemla does not use that).
//! - `aclnnMulsGetWorkspaceSize(const aclTensor *self, const aclScalar *other,
//!   aclTensor *out, ...)`: out = self * other (.../aolapi/context/aclnnMuls.md).
//! - `aclnnInplaceZeroGetWorkspaceSize(aclTensor *selfRef, ...)`: selfRef = 0;
//!   non-contiguous views allowed; on A2/A3 INT8 ... FLOAT32, BFLOAT16 among others (the
//!   emulator: the numeric dtypes it knows); a dtype outside is ACLNN_ERR_PARAM_INVALID
//!   (hicann/ops-math `math/zero_op/docs/aclnnInplaceZero.md`).
//! - `aclnnClampGetWorkspaceSize(const aclTensor *self, const aclScalar *clipValueMin,
//!   const aclScalar *clipValueMax, aclTensor *out, ...)`: y = max(min(x, max), min); a
//!   null bound is no bound, both null is ACLNN_ERR_PARAM_NULLPTR; self 1-8 dims,
//!   non-contiguous allowed; out self's shape and dtype; A2/A3 dtypes include FLOAT16,
//!   FLOAT, BFLOAT16 (.../aolapi/context/aclnnClamp.md). NaN is not documented: the
//!   emulator propagates it (torch.clamp's semantics, which torch_npu maps to this op), a
//!   point to check on silicon.
//! - `aclnnSoftplusGetWorkspaceSize(const aclTensor *self, const aclScalar *beta, const
//!   aclScalar *threshold, aclTensor *out, ...)`: out = log(1 + exp(beta * x)) / beta, or x
//!   where beta * x > threshold; FLOAT16, FLOAT, BFLOAT16; null arguments
//!   ACLNN_ERR_PARAM_NULLPTR (hicann/ops-nn `activation/softplus_v2/docs/aclnnSoftplus.md`).
//! - `aclnnMulGetWorkspaceSize(const aclTensor *self, const aclTensor *other, aclTensor
//!   *out, ...)`: out = self * other with broadcasting (.../aolapi/context/aclnnMul.md); the
//!   emulator broadcasts tensors of equal rank (each dim equal or 1), floats only.
//! - `aclnnSqrtGetWorkspaceSize(const aclTensor *self, aclTensor *out, ...)`: out = sqrt(x)
//!   (.../aolapi/context/aclnnSqrt.md).

use super::{aclnn_launch, expect_dims, expect_dtype, expect_float_unary};
use crate::executor::prepare;
use crate::handles::{scalar, tensor, AclScalar, AclTensor};
use crate::status::{Fail, ACLNN_ERR_PARAM_NULLPTR};
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I32, DT_I64, DT_U8};
use std::ffi::c_void;

const NUMERIC: [i32; 5] = [DT_F32, DT_F16, DT_BF16, DT_I32, DT_I64];

/// First phase of aclnnCast.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnCastGetWorkspaceSize(
    self_: *const AclTensor,
    dtype: i32,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnCast", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let y = tensor(out, "out")?;
            // UINT8 in: aclnnCast.md lists it among self's dtypes (codes read as integers).
            expect_dtype(
                &x,
                &[DT_F32, DT_F16, DT_BF16, DT_I32, DT_I64, DT_U8],
                "self",
            )?;
            expect_dtype(&y, &[dtype], "out (must be the requested dtype)")?;
            expect_dtype(&y, &NUMERIC, "out")?;
            expect_dims(&y, &x.dims, "out")?;
            Ok(Box::new(move || y.store(&x.load()?)))
        })
    }
}
aclnn_launch!(aclnnCast);

/// First phase of aclnnInplaceCopy.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnInplaceCopyGetWorkspaceSize(
    self_ref: *const AclTensor,
    src: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnInplaceCopy", workspace_size, executor, || {
            let dst = tensor(self_ref, "selfRef")?;
            let src = tensor(src, "src")?;
            expect_dtype(&dst, &NUMERIC, "selfRef")?;
            expect_dtype(&src, &NUMERIC, "src")?;
            expect_dims(&src, &dst.dims, "src (the emulator does not broadcast)")?;
            Ok(Box::new(move || dst.store(&src.load()?)))
        })
    }
}
aclnn_launch!(aclnnInplaceCopy);

/// First phase of aclnnMuls.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnMulsGetWorkspaceSize(
    self_: *const AclTensor,
    other: *const AclScalar,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnMuls", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let s = scalar(other, "other")?;
            let y = tensor(out, "out")?;
            expect_float_unary(&x, &y)?;
            Ok(Box::new(move || {
                let v: Vec<f64> = x.load()?.into_iter().map(|e| e * s).collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnMuls);

/// First phase of aclnnInplaceZero.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnInplaceZeroGetWorkspaceSize(
    self_ref: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnInplaceZero", workspace_size, executor, || {
            let x = tensor(self_ref, "selfRef")?;
            expect_dtype(&x, &NUMERIC, "selfRef")?;
            Ok(Box::new(move || x.store(&vec![0.0; x.numel()])))
        })
    }
}
aclnn_launch!(aclnnInplaceZero);

/// First phase of aclnnClamp.
///
/// # Safety
/// Pointers are checked against the emulator's records (a bound may be null); out-pointers
/// must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnClampGetWorkspaceSize(
    self_: *const AclTensor,
    clip_min: *const AclScalar,
    clip_max: *const AclScalar,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnClamp", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let y = tensor(out, "out")?;
            if clip_min.is_null() && clip_max.is_null() {
                return Err(Fail::new(
                    ACLNN_ERR_PARAM_NULLPTR,
                    "clipValueMin and clipValueMax are both null",
                ));
            }
            let lo = if clip_min.is_null() {
                None
            } else {
                Some(scalar(clip_min, "clipValueMin")?)
            };
            let hi = if clip_max.is_null() {
                None
            } else {
                Some(scalar(clip_max, "clipValueMax")?)
            };
            expect_dtype(&x, &NUMERIC, "self")?;
            expect_dtype(&y, &[x.dtype], "out (the dtype of self)")?;
            expect_dims(&y, &x.dims, "out")?;
            if x.dims.is_empty() || x.dims.len() > 8 {
                return Err(Fail::invalid(format!(
                    "self must have 1..=8 dims, got {:?}",
                    x.dims
                )));
            }
            Ok(Box::new(move || {
                let v: Vec<f64> = x
                    .load()?
                    .into_iter()
                    .map(|e| {
                        // NaN propagates (module doc).
                        let e = match hi {
                            Some(h) if e > h => h,
                            _ => e,
                        };
                        match lo {
                            Some(l) if e < l => l,
                            _ => e,
                        }
                    })
                    .collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnClamp);

/// First phase of aclnnSoftplus.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnSoftplusGetWorkspaceSize(
    self_: *const AclTensor,
    beta: *const AclScalar,
    threshold: *const AclScalar,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnSoftplus", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let b = scalar(beta, "beta")?;
            let t = scalar(threshold, "threshold")?;
            let y = tensor(out, "out")?;
            expect_float_unary(&x, &y)?;
            Ok(Box::new(move || {
                let v: Vec<f64> = x
                    .load()?
                    .into_iter()
                    .map(|e| {
                        if b * e > t {
                            e
                        } else {
                            (b * e).exp().ln_1p() / b
                        }
                    })
                    .collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnSoftplus);

/// First phase of aclnnSqrt.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnSqrtGetWorkspaceSize(
    self_: *const AclTensor,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnSqrt", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let y = tensor(out, "out")?;
            expect_float_unary(&x, &y)?;
            Ok(Box::new(move || {
                let v: Vec<f64> = x.load()?.into_iter().map(f64::sqrt).collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnSqrt);

/// First phase of aclnnMul.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnMulGetWorkspaceSize(
    self_: *const AclTensor,
    other: *const AclTensor,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnMul", workspace_size, executor, || {
            let a = tensor(self_, "self")?;
            let b = tensor(other, "other")?;
            let y = tensor(out, "out")?;
            let floats = [DT_F32, DT_F16, DT_BF16];
            expect_dtype(&a, &floats, "self")?;
            expect_dtype(&b, &floats, "other")?;
            expect_dtype(&y, &floats, "out")?;
            let rank = a.dims.len();
            let fits = b.dims.len() == rank
                && a.dims
                    .iter()
                    .zip(&b.dims)
                    .all(|(&x, &z)| x == z || x == 1 || z == 1);
            if !fits {
                return Err(Fail::invalid(format!(
                    "emulator: self {:?} and other {:?} must have equal rank and broadcast",
                    a.dims, b.dims
                )));
            }
            let dims: Vec<usize> = a
                .dims
                .iter()
                .zip(&b.dims)
                .map(|(&x, &z)| x.max(z))
                .collect();
            expect_dims(&y, &dims, "out")?;
            Ok(Box::new(move || {
                let (av, bv) = (a.load()?, b.load()?);
                let n: usize = dims.iter().product();
                let at = |t: &crate::tensor::TensorDesc, flat: usize| {
                    // Row-major index of the broadcast element in `t`.
                    let mut rem = flat;
                    let mut idx = 0;
                    let mut stride = 1;
                    for d in (0..dims.len()).rev() {
                        let i = rem % dims[d];
                        rem /= dims[d];
                        if t.dims[d] != 1 {
                            idx += i * stride;
                        }
                        stride *= t.dims[d];
                    }
                    idx
                };
                let v: Vec<f64> = (0..n).map(|f| av[at(&a, f)] * bv[at(&b, f)]).collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnMul);
