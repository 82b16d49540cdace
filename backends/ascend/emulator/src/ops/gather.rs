//! aclnnGather: `aclnnGatherGetWorkspaceSize(const aclTensor *self, const int64_t dim,
//! const aclTensor *index, aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`;
//! torch.gather semantics, out[i][j] = self[i][index[i][j]] for dim 1, index INT32/INT64,
//! out shaped like index with self's dtype
//! (https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1alpha002/API/aolapi/context/aclnnGather.md).
//! The emulator implements 2-D tensors; an index outside self fails with
//! ACLNN_ERR_RUNTIME_ERROR instead of reading out of bounds.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{tensor, AclTensor};
use crate::status::{Fail, ACLNN_ERR_RUNTIME_ERROR};
use crate::tensor::{DT_BF16, DT_F16, DT_F32, DT_I32, DT_I64};
use std::ffi::c_void;

/// First phase of aclnnGather.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnGatherGetWorkspaceSize(
    self_: *const AclTensor,
    dim: i64,
    index: *const AclTensor,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnGather", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let idx = tensor(index, "index")?;
            let y = tensor(out, "out")?;
            expect_dtype(&x, &[DT_F32, DT_F16, DT_BF16, DT_I32, DT_I64], "self")?;
            expect_dtype(&idx, &[DT_I32, DT_I64], "index")?;
            expect_dtype(&y, &[x.dtype], "out (must match self)")?;
            if x.dims.len() != 2 || idx.dims.len() != 2 || !(0..=1).contains(&dim) {
                return Err(Fail::invalid(format!(
                    "emulator: 2-D self and index, dim 0 or 1 only (got {:?}, {:?}, dim {dim})",
                    x.dims, idx.dims
                )));
            }
            let d = dim as usize;
            let other = 1 - d;
            if idx.dims[other] > x.dims[other] {
                return Err(Fail::invalid("index is larger than self outside `dim`"));
            }
            expect_dims(&y, &idx.dims, "out (shaped like index)")?;
            Ok(Box::new(move || {
                let (xv, iv) = (x.load()?, idx.load()?);
                let (cols, icols) = (x.dims[1], idx.dims[1]);
                let mut yv = Vec::with_capacity(iv.len());
                for (n, &v) in iv.iter().enumerate() {
                    let (r, c) = (n / icols, n % icols);
                    if !(0.0..x.dims[d] as f64).contains(&v) {
                        return Err(Fail::new(
                            ACLNN_ERR_RUNTIME_ERROR,
                            format!("index[{r}, {c}] = {v} is outside [0, {})", x.dims[d]),
                        ));
                    }
                    let (sr, sc) = if d == 1 {
                        (r, v as usize)
                    } else {
                        (v as usize, c)
                    };
                    yv.push(xv[sr * cols + sc]);
                }
                y.store(&yv)
            }))
        })
    }
}
aclnn_launch!(aclnnGather);
