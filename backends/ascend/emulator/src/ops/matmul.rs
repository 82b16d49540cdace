//! aclnnMatmul: `aclnnMatmulGetWorkspaceSize(const aclTensor *self, const aclTensor *mat2,
//! aclTensor *out, int8_t cubeMathType, uint64_t *workspaceSize, aclOpExecutor **executor)`;
//! out = self @ mat2, non-contiguous (e.g. transposed) views allowed; cubeMathType 0 =
//! KEEP_DTYPE (<https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnMatmul.md>).
//! The emulator implements the 2-D case (moemla's only use) and accumulates in f64.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{tensor, AclTensor};
use crate::status::Fail;
use crate::tensor::{DT_BF16, DT_F16, DT_F32};
use std::ffi::c_void;

/// First phase of aclnnMatmul.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnMatmulGetWorkspaceSize(
    self_: *const AclTensor,
    mat2: *const AclTensor,
    out: *const AclTensor,
    cube_math_type: i8,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnMatmul", workspace_size, executor, || {
            let a = tensor(self_, "self")?;
            let b = tensor(mat2, "mat2")?;
            let c = tensor(out, "out")?;
            let floats = [DT_F32, DT_F16, DT_BF16];
            expect_dtype(&a, &floats, "self")?;
            expect_dtype(&b, &[a.dtype], "mat2 (must match self)")?;
            expect_dtype(&c, &[a.dtype], "out (must match self)")?;
            if !(0..=3).contains(&cube_math_type) {
                return Err(Fail::invalid(format!(
                    "cubeMathType {cube_math_type} not in 0..=3"
                )));
            }
            if a.dims.len() != 2 || b.dims.len() != 2 || a.dims[1] != b.dims[0] {
                return Err(Fail::invalid(format!(
                    "emulator: 2-D self [M, K] and mat2 [K, N] required, got {:?} and {:?}",
                    a.dims, b.dims
                )));
            }
            let (m, k, n) = (a.dims[0], a.dims[1], b.dims[1]);
            expect_dims(&c, &[m, n], "out")?;
            Ok(Box::new(move || {
                let (av, bv) = (a.load()?, b.load()?);
                let mut cv = vec![0.0f64; m * n];
                for i in 0..m {
                    for p in 0..k {
                        let x = av[i * k + p];
                        for j in 0..n {
                            cv[i * n + j] += x * bv[p * n + j];
                        }
                    }
                }
                c.store(&cv)
            }))
        })
    }
}
aclnn_launch!(aclnnMatmul);
