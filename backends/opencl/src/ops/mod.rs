//! Argument marshalling and launches, one file per op. Ops only enqueue: outputs come from
//! the caller (allocated ones or caller tensors, `_into`), and index arguments are checked
//! through [`crate::flags`] (`dev.index_checks(op)`), reported at the next synchronize.

pub mod dsa_indexer_topk;
pub mod mla_cache_write;
pub mod mla_decode;
pub mod mla_kv_quantize;
pub mod mla_sparse_decode;
pub mod moe_experts;
pub mod moe_experts_v2;
pub mod moe_route;
pub mod moe_route_hash;

use crate::device::ClDevice;
use moemla_core::{DType, Error, Op, Result, Shape};

/// The largest size a kernel takes as an `int`: `INT_MAX` less room for one stride, since
/// kernel loops step one work-group or tile past their bound before they stop.
pub const KERNEL_INT_MAX: usize = i32::MAX as usize - (1 << 16);

/// The largest power of two <= `n` and <= `cap` (at least 1).
pub fn pow2_at_most(n: usize, cap: usize) -> usize {
    let n = n.min(cap).max(1);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// A size as a kernel `int`, when it is at most [`KERNEL_INT_MAX`].
pub fn kernel_int(v: usize) -> Option<i32> {
    (v <= KERNEL_INT_MAX).then_some(v as i32)
}

/// A size as a kernel `int`, or `Unsupported` when it exceeds [`KERNEL_INT_MAX`].
pub fn int(op: Op, what: &str, v: usize) -> Result<i32> {
    kernel_int(v).ok_or_else(|| Error::Unsupported {
        backend: crate::NAME.to_string(),
        op,
        what: format!("{what} = {v}"),
        reason: format!("OpenCL kernels index with 32-bit ints (sizes up to {KERNEL_INT_MAX})"),
    })
}

/// The product of `factors` as a kernel `int` (see [`int`]); an overflowing product is
/// `Unsupported` too.
pub fn int_product(op: Op, what: &str, factors: &[usize]) -> Result<i32> {
    let product = factors.iter().try_fold(1usize, |n, &f| n.checked_mul(f));
    int(op, what, product.unwrap_or(usize::MAX))
}

/// The size in bytes of a `dtype` buffer of `dims` elements (checked: `Error::Size`).
pub fn byte_len(dims: &[usize], dtype: DType) -> Result<usize> {
    Shape::from(dims).byte_len(dtype)
}

/// Fails with `Unsupported` unless the device runs work-groups of `size`.
pub fn need_work_group(dev: &ClDevice, op: Op, size: usize) -> Result<()> {
    if size <= dev.facts.max_work_group {
        return Ok(());
    }
    Err(Error::Unsupported {
        backend: crate::NAME.to_string(),
        op,
        what: format!("work-groups of {size}"),
        reason: format!("the device allows at most {}", dev.facts.max_work_group),
    })
}

/// Fails with `Unsupported` unless the device's local memory holds `bytes` per work-group.
pub fn need_local(dev: &ClDevice, op: Op, what: &str, bytes: usize) -> Result<()> {
    if u64::try_from(bytes).is_ok_and(|b| b <= dev.facts.local_mem) {
        return Ok(());
    }
    Err(Error::Unsupported {
        backend: crate::NAME.to_string(),
        op,
        what: format!("{what}: {bytes} bytes of local memory per work-group"),
        reason: format!("the device has {} bytes", dev.facts.local_mem),
    })
}

/// Fails with a device error unless the output buffer `arg` holds `bytes` (a caller's
/// buffer the tensor's shape checks already sized; never written past its end).
pub fn need_len(op: Op, arg: &str, buf: &crate::ClBuffer, bytes: usize) -> Result<()> {
    if buf.len() >= bytes {
        return Ok(());
    }
    Err(Error::Device {
        backend: crate::NAME.to_string(),
        call: op.name().to_string(),
        message: format!("`{arg}` has {} bytes, the op writes {bytes}", buf.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ints_leave_room_for_one_stride() {
        assert_eq!(int(Op::MoeRoute, "E", 256), Ok(256));
        assert_eq!(
            int(Op::MoeRoute, "E", KERNEL_INT_MAX),
            Ok(KERNEL_INT_MAX as i32)
        );
        let err = int(Op::MoeRoute, "E", KERNEL_INT_MAX + 1).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { ref what, .. } if what == &format!("E = {}", KERNEL_INT_MAX + 1)),
            "{err}"
        );
        assert!(int_product(Op::MoeExperts, "T * k", &[1 << 20, 1 << 11]).is_err());
        assert!(int_product(Op::MoeExperts, "T * k", &[usize::MAX, 2]).is_err());
        assert_eq!(int_product(Op::MoeExperts, "T * k", &[1000, 8]), Ok(8000));
    }
}
