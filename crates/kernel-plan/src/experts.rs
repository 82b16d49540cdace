//! `moe_experts`: align/permute, gate-up GEMM with SwiGLU, down GEMM, weighted combine.

use crate::{
    ceil_div, dtype_suffix, fits, DeviceLimits, Launch, PlanError, PlanResult, GRID_YZ_LIMIT,
    INT_LIMIT,
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

/// Sizes of the workspace buffers, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertsWorkspace {
    /// `err`: i32, initialise to `i32::MAX`.
    pub err: usize,
    /// `meta`: i32 (tiles used).
    pub meta: usize,
    /// `sorted_rows`: i32, `max_tiles * TILE_M`.
    pub sorted_rows: usize,
    /// `slot_pos`: i32, `T * k`.
    pub slot_pos: usize,
    /// `tile_expert`: i32, `max_tiles`.
    pub tile_expert: usize,
    /// `act`: run dtype, `max_tiles * TILE_M * I`.
    pub act: usize,
    /// `yslot`: f32, `max_tiles * TILE_M * H`.
    pub yslot: usize,
}

/// The launches of one `moe_experts` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertsPlan {
    /// Upper bound on the number of `TILE_M`-row tiles after padding each expert.
    pub max_tiles: usize,
    /// Workspace sizes.
    pub workspace: ExpertsWorkspace,
    /// `moemla_moe_align`, `moemla_moe_gate_up_*`, `moemla_moe_down_*`,
    /// `moemla_moe_combine_*`, in launch order.
    pub launches: [Launch; 4],
}

/// Upper bound on the tiles needed when `slots` rows are split among `experts` segments,
/// each padded to `TILE_M`: at most `min(E, slots)` segments are non-empty and each adds
/// at most `TILE_M - 1` padding rows.
pub fn max_tiles(slots: usize, experts: usize) -> usize {
    (slots + experts.min(slots) * (TILE_M - 1)) / TILE_M
}

/// Tiles a given per-expert row count needs (what the align kernel computes on device).
pub fn tiles_for_counts(counts: &[usize]) -> usize {
    counts.iter().map(|&c| ceil_div(c, TILE_M)).sum()
}

/// Dynamic shared memory of `moemla_moe_align`: count, row offset and tile offset per expert.
pub fn align_shared_bytes(experts: usize) -> usize {
    12 * experts
}

/// Plans `moe_experts` for T tokens of hidden size H, E experts of intermediate size I and
/// k slots per token, run dtype `dtype`.
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
    let slots = tokens * top_k;
    fits(op, "T * k", slots, INT_LIMIT)?;
    fits(op, "H", hidden, INT_LIMIT)?;
    fits(op, "I", inter, INT_LIMIT)?;
    fits(op, "E", experts, INT_LIMIT)?;
    let tiles = max_tiles(slots, experts);
    let rows = tiles * TILE_M;
    fits(op, "padded rows", rows, INT_LIMIT)?;
    let grid_tiles = fits(op, "row tiles", tiles, INT_LIMIT)?;
    let n_inter = fits(op, "I / 64 tiles", ceil_div(inter, TILE_N), GRID_YZ_LIMIT)?;
    let n_hidden = fits(op, "H / 64 tiles", ceil_div(hidden, TILE_N), GRID_YZ_LIMIT)?;
    let align_smem = align_shared_bytes(experts);
    if align_smem > limits.max_shared_bytes as usize {
        return Err(PlanError {
            op,
            what: format!("E = {experts}"),
            reason: format!(
                "the align kernel needs {align_smem} bytes of shared memory, the device allows {}",
                limits.max_shared_bytes
            ),
        });
    }
    let sfx = dtype_suffix(dtype);
    let launches = [
        Launch {
            kernel: "moemla_moe_align".into(),
            grid: [1, 1, 1],
            block: [ALIGN_BLOCK, 1, 1],
            shared_bytes: align_smem as u32,
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
    Ok(ExpertsPlan {
        max_tiles: tiles,
        workspace: ExpertsWorkspace {
            err: 1,
            meta: 1,
            sorted_rows: rows,
            slot_pos: slots,
            tile_expert: tiles.max(1),
            act: rows * inter,
            yslot: rows * hidden,
        },
        launches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DeviceLimits {
        DeviceLimits {
            compute_units: 132,
            warp_size: 32,
            max_shared_bytes: 227 * 1024,
            tensor_cores: true,
        }
    }

    /// Every way of spreading `slots` rows over `experts` fits in `max_tiles`, and the
    /// worst spreading reaches it.
    #[test]
    fn max_tiles_bounds_every_distribution() {
        for &(slots, experts) in &[(1, 1), (8, 256), (33 * 6, 64), (128, 256), (4096 * 8, 256)] {
            let bound = max_tiles(slots, experts);
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
        assert_eq!(p.workspace.sorted_rows, 128 * 64);
        assert_eq!(p.workspace.act, 128 * 64 * 2048);
        assert_eq!(p.workspace.yslot, 128 * 64 * 7168);
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_bf16");
        assert_eq!(p.launches[1].grid, [128, 32, 1]);
        assert_eq!(p.launches[2].grid, [128, 112, 1]);
        assert_eq!(p.launches[3].grid, [16, 1, 1]);
        assert_eq!(p.launches[0].shared_bytes, 12 * 256);
    }

    #[test]
    fn padding_rounds_each_segment_to_the_tile() {
        assert_eq!(tiles_for_counts(&[0, 1, 64, 65, 128]), 1 + 1 + 2 + 2);
        assert_eq!(max_tiles(1, 256), 1);
        assert_eq!(max_tiles(64, 1), 1);
        assert_eq!(max_tiles(65, 1), 2);
    }
}
