//! `mla_kv_quantize`: one block per row (kernels/README.md, mla_kv_quantize.cu).

use crate::{check_launch, dtype_suffix, fits, DeviceLimits, Launch, PlanResult, INT_LIMIT};
use moemla_core::fp8::DS_V32_DIM;
use moemla_core::{DType, Op};

/// Threads per row: one per dim of each 128-dim tile.
pub const BLOCK: u32 = 128;
/// Static shared memory: one f32 per tile and 32-lane warp.
pub const STATIC_SHARED_BYTES: u32 = 4 * (BLOCK / 32) * 4;

/// The launch quantizing `rows` rows of 576 values of `dtype`. The error flag names an
/// element's linear index, so `rows * 576` must fit an `int`.
pub fn plan(rows: usize, dtype: DType, limits: &DeviceLimits) -> PlanResult<Launch> {
    let op = Op::MlaKvQuantize;
    let grid = fits(op, "N", rows, INT_LIMIT)?;
    let elems = rows.saturating_mul(DS_V32_DIM);
    fits(op, "N * 576", elems, INT_LIMIT)?;
    let launch = Launch {
        kernel: format!("moemla_mla_kv_quantize_{}", dtype_suffix(dtype)),
        grid: [grid, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
    };
    check_launch(op, &launch, STATIC_SHARED_BYTES, limits)?;
    Ok(launch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_of_128_per_row_and_the_flag_position_fits_an_int() {
        let l = plan(33, DType::BF16, &DeviceLimits::hip(304, 64, 64 * 1024)).unwrap();
        assert_eq!(l.kernel, "moemla_mla_kv_quantize_bf16");
        assert_eq!((l.grid, l.block), ([33, 1, 1], [128, 1, 1]));
        let limits = DeviceLimits::cuda(132, 227 * 1024, true);
        let e = plan(i32::MAX as usize / 576 + 1, DType::F32, &limits).unwrap_err();
        assert!(e.what.starts_with("N * 576 = "), "{e:?}");
        assert!(plan(i32::MAX as usize / 576, DType::F32, &limits).is_ok());
    }
}
