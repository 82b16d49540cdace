//! `mla_cache_write`: one block per row (kernels/README.md, mla_kv_quantize.cu), dense rows
//! copied by `moemla_mla_cache_write_dense`, `fp8_ds_v32` rows quantized by
//! `moemla_mla_cache_write_fp8_<DT>` with `mla_kv_quantize`'s row writer. A row is written
//! only if no later row names its slot: up to [`SCAN_ROWS`] rows each block scans the rows
//! after its own (at most `SCAN_ROWS - 1` reads a block, one launch); beyond that a winner
//! table in the workspace (the largest row per slot, [`WinnerTable`]) makes the call linear
//! in N, in three launches.

use crate::{
    ceil_div, check_launch, checked, dtype_suffix, fits, kv_quantize, DeviceLimits, Launch,
    PlanResult, INT_LIMIT,
};
use moemla_core::fp8::DS_V32_DIM;
use moemla_core::{DType, Op};

/// Threads per row: the fp8 row writer's 128 (one per dim of each 128-dim tile); the
/// dense copy uses as many.
pub const BLOCK: u32 = kv_quantize::BLOCK;

/// Rows up to which the write kernels scan for later rows naming their slot (the kernels
/// scan any row count; this bounds the reads a block makes); more rows use a
/// [`WinnerTable`].
pub const SCAN_ROWS: usize = 1024;

/// Threads per block of the winner-table kernels.
pub const TABLE_BLOCK: u32 = 256;

/// The winner table of a call of more than [`SCAN_ROWS`] rows: `entries` (slot, row) pairs
/// in the workspace (keys, then rows, as `int`s), a power of two >= 2N so that probing
/// stays short, emptied and filled before the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinnerTable {
    /// `moemla_cache_winner_clear`: grid (ceil(entries / 256), 1, 1), block (256, 1, 1).
    pub clear: Launch,
    /// `moemla_cache_winner_insert`: grid (ceil(N / 256), 1, 1), block (256, 1, 1).
    pub insert: Launch,
    /// `entries - 1` (the kernels' `mask`).
    pub mask: u32,
    /// Workspace bytes: `entries * 8`.
    pub bytes: usize,
}

/// A planned `mla_cache_write`: the launches and their `int` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheWritePlan {
    /// The winner table's launches, before the write (`None`: the write scans).
    pub table: Option<WinnerTable>,
    /// The write: grid (N, 1, 1), block (128, 1, 1).
    pub launch: Launch,
    /// Bytes per dense row (`Dqk * sizeof(dtype)`; the dense kernel's `row_bytes`), 0
    /// for `fp8_ds_v32`.
    pub row_bytes: u32,
    /// Cache slots, `num_blocks * block_size` (the kernels' `slots`).
    pub slots: u32,
}

/// Plans writing `rows` rows of `d_qk` values of `dtype` into a cache of `slots` slots,
/// dense or (`fp8`) as 656-byte rows. Every count the kernels take as an `int` is
/// checked: rows, slots, a dense row's bytes, for `fp8` the flag position `rows * 576`,
/// and the winner table's size.
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
    // Static shared memory: the block's `skip` int, and for fp8 the row writer's and the
    // `bad_row` int.
    let static_bytes = if fp8 {
        kv_quantize::STATIC_SHARED_BYTES + 8
    } else {
        4
    };
    check_launch(op, &launch, static_bytes, limits)?;
    let table = if rows > SCAN_ROWS {
        Some(winner_table(rows, limits)?)
    } else {
        None
    };
    Ok(CacheWritePlan {
        table,
        launch,
        row_bytes,
        slots,
    })
}

/// The winner table for `rows` rows: a power of two >= 2 * rows entries, at most 2^30 (so
/// that `mask` and every row offset fit the kernels' `int`s).
fn winner_table(rows: usize, limits: &DeviceLimits) -> PlanResult<WinnerTable> {
    let op = Op::MlaCacheWrite;
    let entries = checked(
        op,
        "winner table entries (2N rounded to a power of two)",
        rows.checked_mul(2)
            .and_then(usize::checked_next_power_of_two),
    )?;
    fits(op, "winner table entries", entries, 1 << 30)?;
    let launch = |kernel: &str, threads: usize| Launch {
        kernel: kernel.into(),
        grid: [ceil_div(threads, TABLE_BLOCK as usize) as u32, 1, 1], // <= 2^22
        block: [TABLE_BLOCK, 1, 1],
        shared_bytes: 0,
    };
    let table = WinnerTable {
        clear: launch("moemla_cache_winner_clear", entries),
        insert: launch("moemla_cache_winner_insert", rows),
        mask: (entries - 1) as u32,
        bytes: entries * 8,
    };
    check_launch(op, &table.clear, 0, limits)?;
    check_launch(op, &table.insert, 0, limits)?;
    Ok(table)
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
        assert_eq!(p.table, None);
    }

    #[test]
    fn up_to_scan_rows_the_write_scans_beyond_a_winner_table_is_filled_first() {
        assert_eq!(
            plan(SCAN_ROWS, 576, DType::BF16, false, 9, &hip())
                .unwrap()
                .table,
            None
        );
        // 1025 rows: 2050 rounded up to 4096 entries, 8 bytes each.
        let p = plan(SCAN_ROWS + 1, 576, DType::BF16, true, 9, &hip()).unwrap();
        let t = p.table.unwrap();
        assert_eq!((t.mask, t.bytes), (4095, 4096 * 8));
        assert_eq!(t.clear.kernel, "moemla_cache_winner_clear");
        assert_eq!((t.clear.grid, t.clear.block), ([16, 1, 1], [256, 1, 1]));
        assert_eq!(t.insert.kernel, "moemla_cache_winner_insert");
        assert_eq!((t.insert.grid, t.insert.block), ([5, 1, 1], [256, 1, 1]));
        assert_eq!(p.launch.grid, [1025, 1, 1]);
        // A prefill of 2^20 rows: 2^21 entries, 16 MiB.
        let l = DeviceLimits::cuda(132, 227 * 1024, true);
        let t = plan(1 << 20, 576, DType::BF16, false, 9, &l)
            .unwrap()
            .table
            .unwrap();
        assert_eq!((t.mask, t.bytes), ((1 << 21) - 1, 16 << 20));
        // The table holds at most 2^30 entries: 2^29 rows fit, one more does not.
        assert!(plan(1 << 29, 8, DType::F32, false, 9, &l).is_ok());
        let e = plan((1 << 29) + 1, 8, DType::F32, false, 9, &l).unwrap_err();
        assert_eq!(e.what, format!("winner table entries = {}", 1u64 << 31));
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
