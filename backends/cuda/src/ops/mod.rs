//! Argument marshalling and launches, one file per op (launch geometry from
//! `moemla-kernel-plan`, parameter order from kernels/README.md).

pub(crate) mod mla_decode;
pub(crate) mod moe_experts;
pub(crate) mod moe_route;

use crate::error::CudaError;
use crate::{CudaBuffer, NAME};
use moemla_core::{DeviceTensor, Error, Op, Result};
use moemla_kernel_plan::PlanError;

/// The tensor's CUDA buffer (typed error if it belongs to another backend).
pub(crate) fn buf<'a>(
    t: &'a DeviceTensor,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a CudaBuffer> {
    t.buffer::<CudaBuffer>(NAME, call, arg)
}

/// Converts backend-internal failures at the trait boundary.
pub(crate) trait OrCore<T> {
    /// The contract's error.
    fn or_core(self) -> Result<T>;
}

impl<T> OrCore<T> for std::result::Result<T, CudaError> {
    fn or_core(self) -> Result<T> {
        self.map_err(|e| e.into_error(NAME))
    }
}

impl<T> OrCore<T> for std::result::Result<T, PlanError> {
    fn or_core(self) -> Result<T> {
        self.map_err(|e| e.into_error(NAME))
    }
}

/// A kernel's `int` parameter (the plans have checked every size against `i32::MAX`).
pub(crate) fn int_arg(op: Op, what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Unsupported {
        backend: NAME.to_string(),
        op,
        what: format!("{what} = {value}"),
        reason: "exceeds the kernels' int parameters".into(),
    })
}

/// Reads `n` 64-bit error flags (all ones = clean; else the first bad position in the
/// high word and the value found there in the low word, kernels/README.md).
pub(crate) fn read_flags(
    b: &crate::CudaBackend,
    flags: &cudarc::driver::CudaSlice<u64>,
    n: usize,
) -> Result<Vec<Option<(usize, i64)>>> {
    let words = b.dev.download(flags, 0, n).or_core()?;
    Ok(words
        .into_iter()
        .map(|w| (w != u64::MAX).then(|| ((w >> 32) as usize, i64::from(w as u32 as i32))))
        .collect())
}
