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
//! - [`experts::plan`] for `moe_experts` ([`experts::plan_with`] for FP8),
//! - [`kv_quantize::plan`] for `mla_kv_quantize`,
//! - [`cache_write::plan`] for `mla_cache_write`,
//! - [`mla::plan`] for `mla_decode` (with [`mla::split_range`], the device's split rule),
//! - [`mla_sparse::plan`] for `mla_sparse_decode`,
//! - [`dsa_indexer::plan`] for `dsa_indexer_topk`.

pub mod cache_write;
pub mod dsa_indexer;
pub mod experts;
pub mod kv_quantize;
pub mod mla;
pub mod mla_sparse;
pub mod route;

use moemla_core::{DType, Error, Op};

/// What a plan needs to know about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (CUDA) or compute units (HIP).
    pub compute_units: u32,
    /// Lanes per warp / wavefront (32 or 64).
    pub warp_size: u32,
    /// Largest shared memory one block may use (static and dynamic together, opt-in
    /// included), in bytes (sm_80: 163 KiB, sm_90: 227 KiB, gfx942: 64 KiB).
    pub max_shared_bytes: u32,
    /// Whether the f16/bf16 kernels take their tensor-core path (CUDA sm_80 and newer).
    pub tensor_cores: bool,
    /// Largest grid, in blocks, per dimension.
    pub max_grid: [u32; 3],
    /// Largest grid dimension times block dimension, in threads (HIP counts a launch's
    /// size in threads per dimension in 32 bits; CUDA has no such limit).
    pub max_grid_threads: u64,
}

impl DeviceLimits {
    /// A CUDA device: 32-lane warps and CUDA's grid limits.
    pub fn cuda(compute_units: u32, max_shared_bytes: u32, tensor_cores: bool) -> Self {
        DeviceLimits {
            compute_units,
            warp_size: 32,
            max_shared_bytes,
            tensor_cores,
            max_grid: Self::CUDA_GRID,
            max_grid_threads: u64::MAX,
        }
    }

    /// A HIP device (the kernels' portable path: no tensor cores) and HIP's grid limits.
    pub fn hip(compute_units: u32, warp_size: u32, max_shared_bytes: u32) -> Self {
        DeviceLimits {
            compute_units,
            warp_size,
            max_shared_bytes,
            tensor_cores: false,
            max_grid: Self::HIP_GRID,
            max_grid_threads: Self::HIP_GRID_THREADS,
        }
    }

    /// CUDA's grid limits (every compute capability since 3.0): 2^31 - 1 blocks in x,
    /// 65535 in y and z.
    pub const CUDA_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
    /// HIP's grid limits: as CUDA's in blocks (`hipDeviceProp_t::maxGridSize`), and at most
    /// 2^32 - 1 threads per dimension (`hipModuleLaunchKernel` takes the global size in
    /// 32 bits).
    pub const HIP_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
    /// HIP's limit on grid dimension times block dimension.
    pub const HIP_GRID_THREADS: u64 = u32::MAX as u64;
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

/// `a` rounded up to a multiple of `b > 0`, `None` on overflow.
pub fn round_up(a: usize, b: usize) -> Option<usize> {
    a.div_ceil(b).checked_mul(b)
}

/// Checks that a size fits the kernels' `int` parameters and grid limits.
pub(crate) fn fits(op: Op, what: &str, value: usize, limit: usize) -> PlanResult<u32> {
    if value <= limit {
        u32::try_from(value).map_err(|_| too_large(op, what, value, limit))
    } else {
        Err(too_large(op, what, value, limit))
    }
}

fn too_large(op: Op, what: &str, value: usize, limit: usize) -> PlanError {
    PlanError {
        op,
        what: format!("{what} = {value}"),
        reason: format!("exceeds the kernels' limit of {limit}"),
    }
}

/// A size computed with checked arithmetic: `None` (an overflow) becomes a [`PlanError`]
/// naming the quantity.
pub(crate) fn checked(op: Op, what: &str, value: Option<usize>) -> PlanResult<usize> {
    value.ok_or_else(|| PlanError {
        op,
        what: what.to_string(),
        reason: "overflows the address space".to_string(),
    })
}

/// Checks a launch against the device's grid limits and its shared memory (`static_bytes`
/// of static shared memory beside the dynamic `launch.shared_bytes`).
pub(crate) fn check_launch(
    op: Op,
    launch: &Launch,
    static_bytes: u32,
    limits: &DeviceLimits,
) -> PlanResult<()> {
    for d in 0..3 {
        let (grid, block) = (launch.grid[d], launch.block[d]);
        let axis = ["x", "y", "z"][d];
        if grid > limits.max_grid[d] {
            return Err(PlanError {
                op,
                what: format!("{} grid {axis} = {grid} blocks", launch.kernel),
                reason: format!("the device allows {} blocks", limits.max_grid[d]),
            });
        }
        let threads = u64::from(grid) * u64::from(block);
        if threads > limits.max_grid_threads {
            return Err(PlanError {
                op,
                what: format!("{} grid {axis} = {threads} threads", launch.kernel),
                reason: format!(
                    "the device allows {} threads per grid dimension",
                    limits.max_grid_threads
                ),
            });
        }
    }
    let shared = u64::from(launch.shared_bytes) + u64::from(static_bytes);
    if shared > u64::from(limits.max_shared_bytes) {
        return Err(PlanError {
            op,
            what: format!("{} shared memory", launch.kernel),
            reason: format!(
                "needs {shared} bytes per block, the device allows {}",
                limits.max_shared_bytes
            ),
        });
    }
    Ok(())
}

/// A workspace buffer's place in the op's one workspace allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Byte offset from the workspace's start (a multiple of [`WORKSPACE_ALIGN`]).
    pub offset: usize,
    /// Size in bytes.
    pub bytes: usize,
}

/// Alignment of every workspace region, in bytes.
pub const WORKSPACE_ALIGN: usize = 256;

/// Lays out regions of the given byte sizes back to back, each aligned to
/// [`WORKSPACE_ALIGN`]; returns them and the total size (checked).
pub(crate) fn layout<const N: usize>(
    op: Op,
    sizes: [(&str, Option<usize>); N],
) -> PlanResult<([Region; N], usize)> {
    let mut regions = [Region {
        offset: 0,
        bytes: 0,
    }; N];
    let mut end = 0usize;
    for (region, (what, bytes)) in regions.iter_mut().zip(sizes) {
        let bytes = checked(op, what, bytes)?;
        let offset = checked(op, "workspace size", round_up(end, WORKSPACE_ALIGN))?;
        end = checked(op, "workspace size", offset.checked_add(bytes))?;
        *region = Region { offset, bytes };
    }
    Ok((regions, end))
}

/// Largest value of an `int` kernel parameter.
pub(crate) const INT_LIMIT: usize = i32::MAX as usize;

#[cfg(test)]
mod tests {
    use super::*;

    fn hip() -> DeviceLimits {
        DeviceLimits::hip(304, 64, 64 * 1024)
    }

    fn launch(grid: [u32; 3], block: u32, shared_bytes: u32) -> Launch {
        Launch {
            kernel: "k".into(),
            grid,
            block: [block, 1, 1],
            shared_bytes,
        }
    }

    #[test]
    fn grids_beyond_the_device_limits_are_plan_errors() {
        let l = hip();
        assert!(check_launch(Op::MoeRoute, &launch([1 << 20, 1, 1], 256, 0), 0, &l).is_ok());
        // 2^24 blocks of 256 threads = 2^32 threads: one more than HIP counts.
        let e = check_launch(Op::MoeRoute, &launch([1 << 24, 1, 1], 256, 0), 0, &l).unwrap_err();
        assert!(e.what.contains("4294967296 threads"), "{e:?}");
        let e = check_launch(Op::MoeRoute, &launch([1, 65_536, 1], 1, 0), 0, &l).unwrap_err();
        assert!(e.reason.contains("65535 blocks"), "{e:?}");
    }

    #[test]
    fn static_shared_memory_counts_against_the_limit() {
        let l = hip();
        assert!(check_launch(Op::MoeRoute, &launch([1, 1, 1], 64, 65_536), 0, &l).is_ok());
        let e = check_launch(Op::MoeRoute, &launch([1, 1, 1], 64, 65_536), 4, &l).unwrap_err();
        assert!(e.reason.contains("65540 bytes"), "{e:?}");
    }

    #[test]
    fn workspace_regions_are_aligned_and_overflow_is_an_error() {
        let (r, total) = layout(Op::MoeExperts, [("a", Some(10)), ("b", Some(300))]).unwrap();
        assert_eq!(
            r[0],
            Region {
                offset: 0,
                bytes: 10
            }
        );
        assert_eq!(
            r[1],
            Region {
                offset: 256,
                bytes: 300
            }
        );
        assert_eq!(total, 556);
        let e = layout(
            Op::MoeExperts,
            [("a", Some(usize::MAX - 8)), ("b", Some(1))],
        )
        .unwrap_err();
        assert_eq!(e.what, "workspace size");
        let e = layout(Op::MoeExperts, [("act", None)]).unwrap_err();
        assert_eq!(e.what, "act");
    }

    #[test]
    fn fits_never_wraps() {
        assert_eq!(fits(Op::MoeRoute, "T", 7, INT_LIMIT).unwrap(), 7);
        let e = fits(Op::MoeRoute, "T", usize::MAX, INT_LIMIT).unwrap_err();
        assert!(e.what.starts_with("T = "), "{e:?}");
    }
}
