//! Argument marshalling and launches, one file per op (launch geometry from
//! `moemla-kernel-plan`, parameter order from kernels/README.md).

pub(crate) mod mla_decode;
pub(crate) mod moe_experts;
pub(crate) mod moe_route;

use crate::error::CudaError;
use crate::{CudaBuffer, NAME};
use moemla_core::{DeviceTensor, Error, Result};
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

/// The error for a device flag the host re-check did not confirm (a kernel bug).
pub(crate) fn unconfirmed_flag(what: &str, flag: i32) -> Error {
    Error::Device {
        backend: NAME.to_string(),
        call: what.to_string(),
        message: format!(
            "the device flagged index {flag} but the host re-check found no bad element"
        ),
    }
}

/// Reads one i32 error flag set (`i32::MAX` = clean).
pub(crate) fn read_flags(
    b: &crate::CudaBackend,
    flags: &cudarc::driver::CudaSlice<i32>,
    n: usize,
) -> Result<Vec<i32>> {
    b.dev.download(flags, 0, n).or_core()
}

/// Little-endian i32 elements of a byte buffer.
pub(crate) fn as_i32(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
