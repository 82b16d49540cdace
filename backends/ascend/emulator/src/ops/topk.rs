//! aclnnRelu and aclnnTopk.
//!
//! - `aclnnReluGetWorkspaceSize(const aclTensor *self, aclTensor *out, ...)`: out =
//!   max(x, 0), FLOAT/FLOAT16/BFLOAT16 among others, out self's shape and dtype
//!   (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnRelu.md>).
//!   NaN: not documented; the emulator propagates it.
//! - `aclnnTopkGetWorkspaceSize(const aclTensor *self, int64_t k, int64_t dim, bool largest,
//!   bool sorted, aclTensor *valuesOut, aclTensor *indicesOut, ...)`: the k largest (or
//!   smallest) elements along `dim` and their indices (INT64), descending when sorted;
//!   k in [0, self.size(dim)]; valuesOut self's dtype
//!   (.../aolapi/context/aclnnTopk.md). The emulator takes the last dimension, largest and
//!   sorted only. Equal values: the page gives no order; the emulator keeps the lower index
//!   first (callers must not rely on it). NaN ranks above every number (torch.topk's
//!   order), also undocumented.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{tensor, AclTensor};
use crate::status::Fail;
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I64};
use std::ffi::c_void;

const FLOATS: [i32; 3] = [DT_F32, DT_F16, DT_BF16];

/// First phase of aclnnRelu.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnReluGetWorkspaceSize(
    self_: *const AclTensor,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnRelu", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let y = tensor(out, "out")?;
            expect_dtype(&x, &FLOATS, "self")?;
            expect_dtype(&y, &[x.dtype], "out (the dtype of self)")?;
            expect_dims(&y, &x.dims, "out")?;
            Ok(Box::new(move || {
                let v: Vec<f64> = x
                    .load()?
                    .into_iter()
                    .map(|e| if e < 0.0 { 0.0 } else { e })
                    .collect();
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnRelu);

/// First phase of aclnnTopk.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnTopkGetWorkspaceSize(
    self_: *const AclTensor,
    k: i64,
    dim: i64,
    largest: bool,
    sorted: bool,
    values_out: *const AclTensor,
    indices_out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnTopk", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let vals = tensor(values_out, "valuesOut")?;
            let idx = tensor(indices_out, "indicesOut")?;
            expect_dtype(&x, &FLOATS, "self")?;
            expect_dtype(&vals, &[x.dtype], "valuesOut (the dtype of self)")?;
            expect_dtype(&idx, &[DT_I64], "indicesOut")?;
            let rank = x.dims.len() as i64;
            if rank == 0 || (dim != rank - 1 && dim != -1) || !largest || !sorted {
                return Err(Fail::invalid(format!(
                    "emulator: last dimension, largest and sorted only (dim {dim} of rank \
                     {rank}, largest {largest}, sorted {sorted})"
                )));
            }
            let width = x.dims[x.dims.len() - 1];
            if !(0..=width as i64).contains(&k) {
                return Err(Fail::invalid(format!("k {k} is outside [0, {width}]")));
            }
            let k = k as usize;
            let mut want = x.dims.clone();
            *want.last_mut().expect("rank >= 1") = k;
            expect_dims(&vals, &want, "valuesOut")?;
            expect_dims(&idx, &want, "indicesOut")?;
            Ok(Box::new(move || {
                let v = x.load()?;
                let (mut vo, mut io) = (Vec::new(), Vec::new());
                for row in v.chunks(width.max(1)) {
                    let mut order: Vec<usize> = (0..row.len()).collect();
                    // NaN first, then descending; equal values by index (module doc).
                    order.sort_by(|&a, &b| {
                        let key = |i: usize| (row[i].is_nan(), row[i]);
                        let (ka, kb) = (key(a), key(b));
                        kb.0.cmp(&ka.0)
                            .then(kb.1.partial_cmp(&ka.1).unwrap_or(std::cmp::Ordering::Equal))
                            .then(a.cmp(&b))
                    });
                    for &i in &order[..k] {
                        vo.push(row[i]);
                        io.push(i as f64);
                    }
                }
                vals.store(&vo)?;
                idx.store(&io)
            }))
        })
    }
}
aclnn_launch!(aclnnTopk);
