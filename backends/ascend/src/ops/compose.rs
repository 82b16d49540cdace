//! Single aclnn calls that the composed mappings (dsa_indexer_topk, mla_sparse_decode,
//! mla_decode and its lse pass, mla_cache_write, moe_experts) share. The caller builds the tensors and has checked,
//! through its op's `available()`, that every op it calls was found.

use crate::acl::{AclObject, AclTensor};
use crate::buffer::DevMem;
use crate::device::Device;
use moemla_core::Result;
use std::sync::Arc;

/// aclnnCast of `src` into `dst` (same dims), `to` being `dst`'s dtype.
pub(crate) fn cast(
    dev: &Arc<Device>,
    src: &AclTensor<'_>,
    to: i32,
    dst: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnCast",
        |ws, ex| unsafe {
            (ops.aclnnCastGetWorkspaceSize
                .expect("checked by available()"))(src.raw(), to, dst.raw(), ws, ex)
        },
        ops.aclnnCast,
    )
}

/// [`cast`] of the contiguous buffer `src` (dtype `from`) into `dst` (dtype `to`), both
/// viewed as `dims` from element 0.
pub(crate) fn cast_mem(
    dev: &Arc<Device>,
    src: &DevMem,
    dims: &[usize],
    from: i32,
    dst: &DevMem,
    to: i32,
) -> Result<()> {
    let a = dev.tensor(src, dims, None, 0, from)?;
    let b = dev.tensor(dst, dims, None, 0, to)?;
    cast(dev, &a, to, &b)
}

/// aclnnInplaceCopy: `dst = src` (converting the dtype; both views of the same shape).
pub(crate) fn inplace_copy(
    dev: &Arc<Device>,
    dst: &AclTensor<'_>,
    src: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnInplaceCopy",
        |ws, ex| unsafe {
            (ops.aclnnInplaceCopyGetWorkspaceSize
                .expect("checked by available()"))(dst.raw(), src.raw(), ws, ex)
        },
        ops.aclnnInplaceCopy,
    )
}

/// aclnnMatmul: `out = a @ m2`, cubeMathType 0 (KEEP_DTYPE).
pub(crate) fn matmul(
    dev: &Arc<Device>,
    a: &AclTensor<'_>,
    m2: &AclTensor<'_>,
    out: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnMatmul",
        |ws, ex| unsafe {
            (ops.aclnnMatmulGetWorkspaceSize
                .expect("checked by available()"))(
                a.raw(), m2.raw(), out.raw(), 0, ws, ex
            )
        },
        ops.aclnnMatmul,
    )
}

/// aclnnIndexSelect: `out` = the slices of `src` at `index` along `dim`. Every index must lie
/// inside that dimension (the caller's check).
pub(crate) fn index_select(
    dev: &Arc<Device>,
    src: &AclTensor<'_>,
    dim: i64,
    index: &AclTensor<'_>,
    out: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`; the indices
    // lie inside `src` (above).
    dev.run(
        "aclnnIndexSelect",
        |ws, ex| unsafe {
            (ops.aclnnIndexSelectGetWorkspaceSize
                .expect("checked by available()"))(
                src.raw(), dim, index.raw(), out.raw(), ws, ex
            )
        },
        ops.aclnnIndexSelect,
    )
}

/// aclnnMuls: `out = x * scalar`.
pub(crate) fn muls(
    dev: &Arc<Device>,
    x: &AclTensor<'_>,
    scalar: &AclObject<'_>,
    out: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnMuls",
        |ws, ex| unsafe {
            (ops.aclnnMulsGetWorkspaceSize
                .expect("checked by available()"))(
                x.raw(), scalar.raw(), out.raw(), ws, ex
            )
        },
        ops.aclnnMuls,
    )
}

/// aclnnLogSumExp of `x` over the dims in `dims` (keepDim false) into `y`.
pub(crate) fn log_sum_exp(
    dev: &Arc<Device>,
    x: &AclTensor<'_>,
    dims: &AclObject<'_>,
    y: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnLogSumExp",
        |ws, ex| unsafe {
            (ops.aclnnLogSumExpGetWorkspaceSize
                .expect("checked by available()"))(
                x.raw(), dims.raw(), false, y.raw(), ws, ex
            )
        },
        ops.aclnnLogSumExp,
    )
}
