//! # moemla-kernel-plan
//!
//! Launch plans for the kernels in `kernels/cuda` (shared by the CUDA and HIP backends):
//! which entry points to launch, in which order, with which grid, block and dynamic
//! shared memory, and how large each workspace buffer must be. Pure arithmetic, no SDK.
//!
//! `kernels/README.md` documents the kernels' parameters; this crate is the single place
//! that turns problem sizes and device limits into launch geometry.
//!
//! - [`route::plan`] for `moe_route`,
//! - [`experts::plan`] for `moe_experts`,
//! - [`mla::plan`] for `mla_decode` (with [`mla::split_range`], the device's split rule).

pub mod experts;
pub mod mla;
pub mod route;

use moemla_core::{DType, Error, Op};

/// What a plan needs to know about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (CUDA) or compute units (HIP).
    pub compute_units: u32,
    /// Lanes per warp / wavefront (32 or 64).
    pub warp_size: u32,
    /// Largest dynamic shared memory one block may use, opt-in included, in bytes
    /// (sm_80: 163 KiB, sm_90: 227 KiB, gfx942: 64 KiB).
    pub max_shared_bytes: u32,
    /// Whether the f16/bf16 kernels take their tensor-core path (CUDA sm_80 and newer).
    pub tensor_cores: bool,
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The `extern "C"` entry point.
    pub kernel: String,
    /// Grid dimensions in blocks (x, y, z).
    pub grid: [u32; 3],
    /// Block dimensions in threads (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// A problem the kernels cannot run (too large for a grid dimension or shared memory).
/// Convert with [`PlanError::into_error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// The op.
    pub op: Op,
    /// What is out of reach ("d_qk = 8192").
    pub what: String,
    /// Why.
    pub reason: String,
}

impl PlanError {
    /// The contract's [`Error::Unsupported`] for backend `backend`.
    pub fn into_error(self, backend: &str) -> Error {
        Error::Unsupported {
            backend: backend.to_string(),
            op: self.op,
            what: self.what,
            reason: self.reason,
        }
    }
}

/// Result of planning.
pub type PlanResult<T> = Result<T, PlanError>;

/// The entry-point suffix of a run dtype (`f32`, `f16`, `bf16`).
pub fn dtype_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// `ceil(a / b)` for `b > 0`.
pub fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// `a` rounded up to a multiple of `b > 0`.
pub fn round_up(a: usize, b: usize) -> usize {
    a.div_ceil(b) * b
}

/// Checks that a size fits the kernels' `int` parameters and grid limits.
pub(crate) fn fits(op: Op, what: &str, value: usize, limit: usize) -> PlanResult<u32> {
    if value <= limit {
        Ok(value as u32)
    } else {
        Err(PlanError {
            op,
            what: format!("{what} = {value}"),
            reason: format!("exceeds the kernels' limit of {limit}"),
        })
    }
}

/// Largest value of an `int` kernel parameter.
pub(crate) const INT_LIMIT: usize = i32::MAX as usize;
/// Largest grid y / z dimension.
pub(crate) const GRID_YZ_LIMIT: usize = 65_535;
