//! `moe_experts`: align/permute, gate-up GEMM with SwiGLU, down GEMM, weighted combine.

use crate::{
    ceil_div, check_launch, checked, dtype_suffix, fits, layout, DeviceLimits, Launch, PlanResult,
    Region, INT_LIMIT,
};
use moemla_core::{DType, Op};

/// Rows of one GEMM tile; every expert's segment of the permuted rows is padded to it.
pub const TILE_M: usize = 64;
/// Output columns of one GEMM tile.
pub const TILE_N: usize = 64;
/// Threads per GEMM block (four 32-lane warps on CUDA, two 64-lane wavefronts on HIP).
pub const GEMM_BLOCK: u32 = 128;
/// Threads of the single align block.
pub const ALIGN_BLOCK: u32 = 1024;
/// Threads per combine block.
pub const COMBINE_BLOCK: u32 = 256;
/// Static shared memory of the GEMM kernels at most (gate/up: three 64 x 40 tiles of f32
/// plus 64 row indices), in bytes.
pub const GEMM_STATIC_SHARED_BYTES: u32 = 3 * 64 * 40 * 4 + 64 * 4;

/// Where each workspace buffer lies in the op's workspace (byte regions, see
/// [`crate::Region`]). None needs initialising: the kernels write everything they read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertsWorkspace {
    /// `sorted_rows`: i32, `max_tiles * TILE_M`.
    pub sorted_rows: Region,
    /// `slot_pos`: i32, `T * k`.
    pub slot_pos: Region,
    /// `tile_expert`: i32, `max(max_tiles, 1)`.
    pub tile_expert: Region,
    /// `meta`: i32[1] (tiles used).
    pub meta: Region,
    /// `act`: run dtype, `max_tiles * TILE_M * I`.
    pub act: Region,
    /// `yslot`: f32, `max_tiles * TILE_M * H`.
    pub yslot: Region,
    /// Total bytes.
    pub bytes: usize,
}

/// The launches of one `moe_experts` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertsPlan {
    /// Routing slots, `T * k` (checked).
    pub slots: usize,
    /// Upper bound on the number of `TILE_M`-row tiles after padding each expert.
    pub max_tiles: usize,
    /// Workspace layout.
    pub workspace: ExpertsWorkspace,
    /// Bytes of `y` [T, H] in the run dtype.
    pub y_bytes: usize,
    /// `moemla_moe_align`, `moemla_moe_gate_up_*`, `moemla_moe_down_*`,
    /// `moemla_moe_combine_*`, in launch order.
    pub launches: [Launch; 4],
}

/// Upper bound on the tiles needed when `slots` rows are split among `experts` segments,
/// each padded to `TILE_M`: at most `min(E, slots)` segments are non-empty and each adds
/// at most `TILE_M - 1` padding rows. `None` on overflow.
pub fn max_tiles(slots: usize, experts: usize) -> Option<usize> {
    let padding = experts.min(slots).checked_mul(TILE_M - 1)?;
    Some(slots.checked_add(padding)? / TILE_M)
}

/// Tiles a given per-expert row count needs (what the align kernel computes on device).
pub fn tiles_for_counts(counts: &[usize]) -> usize {
    counts.iter().map(|&c| ceil_div(c, TILE_M)).sum()
}

/// Dynamic shared memory of `moemla_moe_align`: count, row offset and tile offset per expert.
pub fn align_shared_bytes(experts: usize) -> Option<usize> {
    experts.checked_mul(12)
}

/// Plans `moe_experts` for T tokens of hidden size H, E experts of intermediate size I and
/// k slots per token, run dtype `dtype`. Every size is checked: a problem the kernels'
/// `int` parameters, the grid or the address space cannot hold is a [`crate::PlanError`].
pub fn plan(
    tokens: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
    dtype: DType,
    limits: &DeviceLimits,
) -> PlanResult<ExpertsPlan> {
    let op = Op::MoeExperts;
    let elem = dtype.size_in_bytes();
    let slots = checked(op, "T * k", tokens.checked_mul(top_k))?;
    fits(op, "T * k", slots, INT_LIMIT)?;
    fits(op, "H", hidden, INT_LIMIT)?;
    fits(op, "I", inter, INT_LIMIT)?;
    fits(op, "E", experts, INT_LIMIT)?;
    let tiles = checked(op, "row tiles", max_tiles(slots, experts))?;
    let rows = checked(op, "padded rows", tiles.checked_mul(TILE_M))?;
    fits(op, "padded rows", rows, INT_LIMIT)?;
    let grid_tiles = fits(op, "row tiles", tiles, INT_LIMIT)?;
    let n_inter = fits(op, "I / 64 tiles", ceil_div(inter, TILE_N), INT_LIMIT)?;
    let n_hidden = fits(op, "H / 64 tiles", ceil_div(hidden, TILE_N), INT_LIMIT)?;
    let align_smem = checked(op, "E: align shared memory", align_shared_bytes(experts))?;
    let sfx = dtype_suffix(dtype);
    let launches = [
        Launch {
            kernel: "moemla_moe_align".into(),
            grid: [1, 1, 1],
            block: [ALIGN_BLOCK, 1, 1],
            shared_bytes: fits(op, "E: align shared memory", align_smem, u32::MAX as usize)?,
        },
        Launch {
            kernel: format!("moemla_moe_gate_up_{sfx}"),
            grid: [grid_tiles, n_inter, 1],
            block: [GEMM_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: format!("moemla_moe_down_{sfx}"),
            grid: [grid_tiles, n_hidden, 1],
            block: [GEMM_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: format!("moemla_moe_combine_{sfx}"),
            grid: [fits(op, "T", tokens, INT_LIMIT)?, 1, 1],
            block: [COMBINE_BLOCK, 1, 1],
            shared_bytes: 0,
        },
    ];
    check_launch(op, &launches[0], 0, limits)?;
    for l in &launches[1..3] {
        check_launch(op, l, GEMM_STATIC_SHARED_BYTES, limits)?;
    }
    check_launch(op, &launches[3], 0, limits)?;
    let i32s = |n: usize| n.checked_mul(4);
    let (r, bytes) = layout(
        op,
        [
            ("sorted_rows", i32s(rows)),
            ("slot_pos", i32s(slots)),
            ("tile_expert", i32s(tiles.max(1))),
            ("meta", Some(4)),
            (
                "act",
                rows.checked_mul(inter).and_then(|n| n.checked_mul(elem)),
            ),
            (
                "yslot",
                rows.checked_mul(hidden).and_then(|n| n.checked_mul(4)),
            ),
        ],
    )?;
    let y_bytes = checked(
        op,
        "y",
        tokens.checked_mul(hidden).and_then(|n| n.checked_mul(elem)),
    )?;
    Ok(ExpertsPlan {
        slots,
        max_tiles: tiles,
        workspace: ExpertsWorkspace {
            sorted_rows: r[0],
            slot_pos: r[1],
            tile_expert: r[2],
            meta: r[3],
            act: r[4],
            yslot: r[5],
            bytes,
        },
        y_bytes,
        launches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DeviceLimits {
        DeviceLimits::cuda(132, 227 * 1024, true)
    }

    /// Every way of spreading `slots` rows over `experts` fits in `max_tiles`, and the
    /// worst spreading reaches it.
    #[test]
    fn max_tiles_bounds_every_distribution() {
        for &(slots, experts) in &[(1, 1), (8, 256), (33 * 6, 64), (128, 256), (4096 * 8, 256)] {
            let bound = max_tiles(slots, experts).unwrap();
            // All rows on one expert.
            assert!(tiles_for_counts(&[slots]) <= bound);
            // One row per expert as long as rows last, the rest on expert 0.
            let mut counts = vec![0usize; experts];
            for i in 0..slots {
                counts[i % experts] += 1;
            }
            assert!(tiles_for_counts(&counts) <= bound, "{slots} {experts}");
            // Worst case: as many experts as possible with one row past a full tile.
            let nz = experts.min(slots);
            let mut worst = vec![1usize; nz];
            let mut left = slots - nz;
            for c in worst.iter_mut() {
                let add = left.min(TILE_M);
                *c += add;
                left -= add;
            }
            worst[0] += left;
            assert!(tiles_for_counts(&worst) <= bound, "{slots} {experts}");
        }
    }

    #[test]
    fn v3_decode_shape_plan() {
        let p = plan(16, 7168, 2048, 256, 8, DType::BF16, &limits()).unwrap();
        // 128 slots over at most 128 experts: (128 + 128 * 63) / 64 = 128 tiles.
        assert_eq!(p.max_tiles, 128);
        assert_eq!(p.workspace.sorted_rows.bytes, 128 * 64 * 4);
        assert_eq!(p.workspace.act.bytes, 128 * 64 * 2048 * 2);
        assert_eq!(p.workspace.yslot.bytes, 128 * 64 * 7168 * 4);
        assert_eq!(p.y_bytes, 16 * 7168 * 2);
        let ws = p.workspace;
        assert_eq!(ws.bytes, ws.yslot.offset + ws.yslot.bytes);
        assert!(ws.act.offset >= ws.meta.offset + 4 && ws.act.offset.is_multiple_of(256));
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_bf16");
        assert_eq!(p.launches[1].grid, [128, 32, 1]);
        assert_eq!(p.launches[2].grid, [128, 112, 1]);
        assert_eq!(p.launches[3].grid, [16, 1, 1]);
        assert_eq!(p.launches[0].shared_bytes, 12 * 256);
    }

    #[test]
    fn padding_rounds_each_segment_to_the_tile() {
        assert_eq!(tiles_for_counts(&[0, 1, 64, 65, 128]), 1 + 1 + 2 + 2);
        assert_eq!(max_tiles(1, 256), Some(1));
        assert_eq!(max_tiles(64, 1), Some(1));
        assert_eq!(max_tiles(65, 1), Some(2));
        assert_eq!(max_tiles(usize::MAX, 2), None);
    }

    #[test]
    fn sizes_that_overflow_are_plan_errors_not_wraps() {
        let l = limits();
        let e = plan(usize::MAX, 64, 64, 8, 2, DType::F32, &l).unwrap_err();
        assert_eq!(e.what, "T * k");
        let e = plan(1 << 22, 64, 64, 8, 1 << 10, DType::F32, &l).unwrap_err();
        assert!(e.what.starts_with("T * k = "), "{e:?}");
        // act = rows * I * 2 bytes does not fit the address space.
        let e = plan(1 << 20, 64, usize::MAX / 1024, 256, 8, DType::BF16, &l).unwrap_err();
        assert!(e.what.starts_with("I = "), "{e:?}");
        let e = plan(1, 64, 64, usize::MAX / 8, 1, DType::BF16, &l).unwrap_err();
        assert!(e.what.starts_with("E = "), "{e:?}");
    }

    #[test]
    fn grids_beyond_the_device_are_unsupported() {
        let mut l = limits();
        l.max_grid = [i32::MAX as u32, 65_535, 65_535];
        // H / 64 = 65536 tiles in grid y.
        let e = plan(1, 65_536 * 64, 64, 8, 1, DType::F32, &l).unwrap_err();
        assert!(e.what.contains("grid y"), "{e:?}");
    }
}
