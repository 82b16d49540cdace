//! Argument marshalling and launches, one file per op.

pub mod mla_decode;
pub mod moe_experts;
pub mod moe_route;

use crate::device::ClDevice;
use moemla_core::{Error, Op, Result};

/// Flag value meaning "no bad index" (kernels atomic-min the first bad linear index in).
pub const NO_BAD_INDEX: i32 = i32::MAX;

/// The largest power of two <= `n` and <= `cap` (at least 1).
pub fn pow2_at_most(n: usize, cap: usize) -> usize {
    let n = n.min(cap).max(1);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// A size as a kernel `int`, or `Unsupported` when it does not fit.
pub fn int(op: Op, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Unsupported {
        backend: crate::NAME.to_string(),
        op,
        what: format!("{what} = {v}"),
        reason: "OpenCL kernels index with 32-bit ints".to_string(),
    })
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

/// A buffer of `n` flags set to [`NO_BAD_INDEX`].
pub fn flags(dev: &ClDevice, n: usize) -> Result<crate::ClBuffer> {
    let init: Vec<u8> = (0..n).flat_map(|_| NO_BAD_INDEX.to_le_bytes()).collect();
    dev.upload(&init)
}
