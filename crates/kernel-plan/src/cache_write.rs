//! `mla_cache_write`: one block per row (kernels/README.md, mla_kv_quantize.cu), dense rows
//! copied by `moemla_mla_cache_write_dense`, `fp8_ds_v32` rows quantized by
//! `moemla_mla_cache_write_fp8_<DT>` with `mla_kv_quantize`'s row writer.

use crate::{
    check_launch, dtype_suffix, fits, kv_quantize, DeviceLimits, Launch, PlanResult, INT_LIMIT,
};
use moemla_core::fp8::DS_V32_DIM;
use moemla_core::{DType, Op};

/// Threads per row: the fp8 row writer's 128 (one per dim of each 128-dim tile); the
/// dense copy uses as many.
pub const BLOCK: u32 = kv_quantize::BLOCK;

/// A planned `mla_cache_write`: the launch and its `int` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheWritePlan {
    /// The one launch: grid (N, 1, 1), block (128, 1, 1).
    pub launch: Launch,
    /// Bytes per dense row (`Dqk * sizeof(dtype)`; the dense kernel's `row_bytes`), 0
    /// for `fp8_ds_v32`.
    pub row_bytes: u32,
    /// Cache slots, `num_blocks * block_size` (the kernels' `slots`).
    pub slots: u32,
}

/// Plans writing `rows` rows of `d_qk` values of `dtype` into a cache of `slots` slots,
/// dense or (`fp8`) as 656-byte rows. Every count the kernels take as an `int` is
/// checked: rows, slots, a dense row's bytes, and for `fp8` the flag position
/// `rows * 576`.
pub fn plan(
    rows: usize,
    d_qk: usize,
    dtype: DType,
    fp8: bool,
    slots: usize,
    limits: &DeviceLimits,
) -> PlanResult<CacheWritePlan> {
    let op = Op::MlaCacheWrite;
    let grid = fits(op, "N", rows, INT_LIMIT)?;
    let slots = fits(op, "num_blocks * block_size", slots, INT_LIMIT)?;
    let (kernel, row_bytes) = if fp8 {
        fits(op, "N * 576", rows.saturating_mul(DS_V32_DIM), INT_LIMIT)?;
        (
            format!("moemla_mla_cache_write_fp8_{}", dtype_suffix(dtype)),
            0,
        )
    } else {
        let bytes = d_qk.saturating_mul(dtype.size_in_bytes());
        (
            "moemla_mla_cache_write_dense".to_string(),
            fits(op, "Dqk bytes", bytes, INT_LIMIT)?,
        )
    };
    let launch = Launch {
        kernel,
        grid: [grid, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
    };
    let static_bytes = if fp8 {
        kv_quantize::STATIC_SHARED_BYTES + 4
    } else {
        4
    };
    check_launch(op, &launch, static_bytes, limits)?;
    Ok(CacheWritePlan {
        launch,
        row_bytes,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hip() -> DeviceLimits {
        DeviceLimits::hip(304, 64, 64 * 1024)
    }

    #[test]
    fn one_block_of_128_per_row_dense_or_fp8() {
        let p = plan(5, 576, DType::BF16, false, 64 * 10, &hip()).unwrap();
        assert_eq!(p.launch.kernel, "moemla_mla_cache_write_dense");
        assert_eq!((p.launch.grid, p.launch.block), ([5, 1, 1], [128, 1, 1]));
        assert_eq!((p.row_bytes, p.slots), (1152, 640));
        let p = plan(3, 576, DType::F16, true, 7, &hip()).unwrap();
        assert_eq!(p.launch.kernel, "moemla_mla_cache_write_fp8_f16");
        assert_eq!((p.launch.grid, p.row_bytes, p.slots), ([3, 1, 1], 0, 7));
    }

    #[test]
    fn counts_beyond_an_int_are_unsupported_never_wrapped() {
        let l = DeviceLimits::cuda(132, 227 * 1024, true);
        let big = i32::MAX as usize + 1;
        let e = plan(big, 8, DType::F32, false, 10, &l).unwrap_err();
        assert!(e.what.starts_with("N = "), "{e:?}");
        let e = plan(1, 8, DType::F32, false, big, &l).unwrap_err();
        assert!(e.what.starts_with("num_blocks * block_size = "), "{e:?}");
        let e = plan(1, usize::MAX / 2, DType::F32, false, 10, &l).unwrap_err();
        assert!(e.what.starts_with("Dqk bytes = "), "{e:?}");
        let e = plan(i32::MAX as usize / 576 + 1, 576, DType::F32, true, 10, &l).unwrap_err();
        assert!(e.what.starts_with("N * 576 = "), "{e:?}");
        assert!(plan(i32::MAX as usize / 576, 576, DType::F32, true, 10, &l).is_ok());
        // HIP counts a grid dimension's threads in 32 bits: 2^25 rows of 128 threads.
        let e = plan(1 << 25, 8, DType::F32, false, 10, &hip()).unwrap_err();
        assert!(e.what.contains("threads"), "{e:?}");
    }
}
