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
/// Threads per activation-quantization block (one per element of a 128-wide group).
pub const QUANT_BLOCK: u32 = 128;
/// Elements per FP8 activation group and weight block side.
pub const FP8_BLOCK: usize = 128;
/// Static shared memory of the GEMM kernels at most (gate/up: three 64 x 40 tiles of f32,
/// 64 row indices, and the FP8 scales of one k block: 64 row + 2 x 64 column f32), in bytes.
pub const GEMM_STATIC_SHARED_BYTES: u32 = 3 * 64 * 40 * 4 + 64 * 4 + (64 + 2 * 64) * 4;

/// How the experts' weights and activations are stored (contract v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Run-dtype weights (v1).
    Native,
    /// F8E4M3 weights with 128x128 block scales, activations in the run dtype.
    W8A16,
    /// F8E4M3 weights, activations quantized per token and 128 channels
    /// (`fp8_block128`): x before gate/up, `a` (held in f32) before down.
    W8A8,
}

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
    /// `meta`: `i32[1]` (tiles used).
    pub meta: Region,
    /// `act`: run dtype (f32 for [`Precision::W8A8`]), `max_tiles * TILE_M * I`.
    pub act: Region,
    /// `yslot`: f32, `max_tiles * TILE_M * H`.
    pub yslot: Region,
    /// W8A8: e4m3 codes of x, `T * H` bytes (empty otherwise).
    pub x_codes: Region,
    /// W8A8: f32 scales of x, `T * ceil(H / 128)` (empty otherwise).
    pub x_scales: Region,
    /// W8A8: e4m3 codes of `act`, `max_tiles * TILE_M * I` bytes (empty otherwise).
    pub act_codes: Region,
    /// W8A8: f32 scales of `act`, `max_tiles * TILE_M * ceil(I / 128)` (empty otherwise).
    pub act_scales: Region,
    /// Shared experts: their rows (token or -1), i32, `S * seg_tiles * TILE_M` (empty
    /// without shared experts).
    pub shared_rows: Region,
    /// Shared experts: expert per tile, i32, `S * seg_tiles` (empty without).
    pub shared_tile_expert: Region,
    /// Shared experts: `i32[1]` (tiles used, `S * seg_tiles`) (empty without).
    pub shared_meta: Region,
    /// Shared experts: `act` in the run dtype, `S * seg_tiles * TILE_M * Is` (empty without).
    pub shared_act: Region,
    /// Shared experts: f32 down outputs, `S * seg_tiles * TILE_M * H` (empty without).
    pub yshared: Region,
    /// Total bytes.
    pub bytes: usize,
}

/// Sizes of a call's dense shared experts (contract v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedSizes {
    /// S: shared experts.
    pub count: usize,
    /// Is: their intermediate size.
    pub inter: usize,
}

/// The shared experts' launches: every token through each shared expert, as S segments of
/// `seg_tiles` tiles run by the routed experts' run-dtype GEMM kernels with top_k 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedPlan {
    /// Tiles per shared expert, `ceil(T / TILE_M)`.
    pub seg_tiles: usize,
    /// `moemla_moe_shared_rows`, `moemla_moe_gate_up_*`, `moemla_moe_down_*`, launched
    /// after the routed down GEMM and before the combine (then `moemla_moe_combine_shared_*`).
    pub launches: [Launch; 3],
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
    /// `moemla_moe_align`, `moemla_moe_gate_up[_w8a16|_w8a8]_*`,
    /// `moemla_moe_down[_w8a16|_w8a8]_*`, `moemla_moe_combine_*`, in launch order.
    pub launches: [Launch; 4],
    /// W8A8: `moemla_moe_quant_*` of x, launched before gate/up.
    pub quant_x: Option<Launch>,
    /// W8A8: `moemla_moe_quant_f32` of `act`, launched before down.
    pub quant_act: Option<Launch>,
    /// The shared experts' launches, if the call has any.
    pub shared: Option<SharedPlan>,
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
/// k slots per token, run dtype `dtype`, run-dtype weights. Every size is checked: a
/// problem the kernels' `int` parameters, the grid or the address space cannot hold is a
/// [`crate::PlanError`].
pub fn plan(
    tokens: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
    dtype: DType,
    limits: &DeviceLimits,
) -> PlanResult<ExpertsPlan> {
    plan_with(
        tokens,
        hidden,
        inter,
        experts,
        top_k,
        dtype,
        Precision::Native,
        limits,
    )
}

/// [`plan`] for weights and activations stored as `precision` says.
#[allow(clippy::too_many_arguments)]
pub fn plan_with(
    tokens: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
    dtype: DType,
    precision: Precision,
    limits: &DeviceLimits,
) -> PlanResult<ExpertsPlan> {
    plan_with_shared(
        tokens, hidden, inter, experts, top_k, dtype, precision, None, limits,
    )
}

/// [`plan_with`] plus the call's dense shared experts, if any (their weights are the run
/// dtype, so they run on the run-dtype kernels whatever `precision` is).
#[allow(clippy::too_many_arguments)]
pub fn plan_with_shared(
    tokens: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
    dtype: DType,
    precision: Precision,
    shared: Option<SharedSizes>,
    limits: &DeviceLimits,
) -> PlanResult<ExpertsPlan> {
    let op = Op::MoeExperts;
    let a8 = precision == Precision::W8A8;
    let elem = dtype.size_in_bytes();
    let act_elem = if a8 { 4 } else { elem };
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
    let variant = match precision {
        Precision::Native => "",
        Precision::W8A16 => "w8a16_",
        Precision::W8A8 => "w8a8_",
    };
    let quant = |kernel: String, rows: usize, cols: usize| -> PlanResult<Launch> {
        Ok(Launch {
            kernel,
            grid: [
                fits(op, "quantized rows", rows, INT_LIMIT)?,
                fits(
                    op,
                    "128-column groups",
                    ceil_div(cols, FP8_BLOCK),
                    INT_LIMIT,
                )?,
                1,
            ],
            block: [QUANT_BLOCK, 1, 1],
            shared_bytes: 0,
        })
    };
    let (quant_x, quant_act) = if a8 {
        (
            Some(quant(format!("moemla_moe_quant_{sfx}"), tokens, hidden)?),
            Some(quant("moemla_moe_quant_f32".into(), rows, inter)?),
        )
    } else {
        (None, None)
    };
    let mut launches = [
        Launch {
            kernel: "moemla_moe_align".into(),
            grid: [1, 1, 1],
            block: [ALIGN_BLOCK, 1, 1],
            shared_bytes: fits(op, "E: align shared memory", align_smem, u32::MAX as usize)?,
        },
        Launch {
            kernel: format!("moemla_moe_gate_up_{variant}{sfx}"),
            grid: [grid_tiles, n_inter, 1],
            block: [GEMM_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: format!("moemla_moe_down_{variant}{sfx}"),
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
    for l in quant_x.iter().chain(&quant_act) {
        check_launch(op, l, QUANT_BLOCK / 32 * 4, limits)?;
    }
    // Shared experts: S segments of ceil(T / 64) tiles; rows and sizes as the kernels'
    // `int` parameters and the grid hold them.
    let (mut shared_plan, mut s_rows, mut s_tiles, mut s_inter) = (None, 0, 0, 0);
    if let Some(sh) = shared {
        fits(op, "S", sh.count, INT_LIMIT)?;
        fits(op, "Is", sh.inter, INT_LIMIT)?;
        let seg_tiles = ceil_div(tokens, TILE_M);
        fits(op, "T / 64 tiles", seg_tiles, INT_LIMIT)?;
        let seg_rows = checked(op, "T padded rows", seg_tiles.checked_mul(TILE_M))?;
        fits(op, "T padded rows", seg_rows, INT_LIMIT)?;
        s_tiles = checked(op, "S * T / 64 tiles", sh.count.checked_mul(seg_tiles))?;
        let grid = fits(op, "S * T / 64 tiles", s_tiles, INT_LIMIT)?;
        s_rows = checked(op, "S * T padded rows", s_tiles.checked_mul(TILE_M))?;
        fits(op, "S * T padded rows", s_rows, INT_LIMIT)?;
        s_inter = sh.inter;
        let l = [
            Launch {
                kernel: "moemla_moe_shared_rows".into(),
                grid: [grid, 1, 1],
                block: [TILE_M as u32, 1, 1],
                shared_bytes: 0,
            },
            Launch {
                kernel: format!("moemla_moe_gate_up_{sfx}"),
                grid: [
                    grid,
                    fits(op, "Is / 64 tiles", ceil_div(sh.inter, TILE_N), INT_LIMIT)?,
                    1,
                ],
                block: [GEMM_BLOCK, 1, 1],
                shared_bytes: 0,
            },
            Launch {
                kernel: format!("moemla_moe_down_{sfx}"),
                grid: [grid, n_hidden, 1],
                block: [GEMM_BLOCK, 1, 1],
                shared_bytes: 0,
            },
        ];
        check_launch(op, &l[0], 0, limits)?;
        for g in &l[1..] {
            check_launch(op, g, GEMM_STATIC_SHARED_BYTES, limits)?;
        }
        launches[3].kernel = format!("moemla_moe_combine_shared_{sfx}");
        shared_plan = Some(SharedPlan {
            seg_tiles,
            launches: l,
        });
    }
    let if_shared = |n: Option<usize>| if shared.is_some() { n } else { Some(0) };
    let i32s = |n: usize| n.checked_mul(4);
    let f32s = i32s;
    let if_a8 = |n: Option<usize>| if a8 { n } else { Some(0) };
    let (r, bytes) = layout(
        op,
        [
            ("sorted_rows", i32s(rows)),
            ("slot_pos", i32s(slots)),
            ("tile_expert", i32s(tiles.max(1))),
            ("meta", Some(4)),
            (
                "act",
                rows.checked_mul(inter)
                    .and_then(|n| n.checked_mul(act_elem)),
            ),
            (
                "yslot",
                rows.checked_mul(hidden).and_then(|n| n.checked_mul(4)),
            ),
            ("x codes", if_a8(tokens.checked_mul(hidden))),
            (
                "x scales",
                if_a8(
                    tokens
                        .checked_mul(ceil_div(hidden, FP8_BLOCK))
                        .and_then(f32s),
                ),
            ),
            ("act codes", if_a8(rows.checked_mul(inter))),
            (
                "act scales",
                if_a8(rows.checked_mul(ceil_div(inter, FP8_BLOCK)).and_then(f32s)),
            ),
            ("shared rows", i32s(s_rows)),
            ("shared tile_expert", i32s(s_tiles)),
            ("shared meta", if_shared(Some(4))),
            (
                "shared act",
                s_rows
                    .checked_mul(s_inter)
                    .and_then(|n| n.checked_mul(elem)),
            ),
            (
                "yshared",
                s_rows.checked_mul(hidden).and_then(|n| n.checked_mul(4)),
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
            x_codes: r[6],
            x_scales: r[7],
            act_codes: r[8],
            act_scales: r[9],
            shared_rows: r[10],
            shared_tile_expert: r[11],
            shared_meta: r[12],
            shared_act: r[13],
            yshared: r[14],
            bytes,
        },
        y_bytes,
        launches,
        quant_x,
        quant_act,
        shared: shared_plan,
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
        assert_eq!((p.quant_x.clone(), p.quant_act.clone()), (None, None));
        assert_eq!(ws.x_codes.bytes + ws.act_scales.bytes, 0);
        assert!(ws.act.offset >= ws.meta.offset + 4 && ws.act.offset.is_multiple_of(256));
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_bf16");
        assert_eq!(p.launches[1].grid, [128, 32, 1]);
        assert_eq!(p.launches[2].grid, [128, 112, 1]);
        assert_eq!(p.launches[3].grid, [16, 1, 1]);
        assert_eq!(p.launches[0].shared_bytes, 12 * 256);
    }

    #[test]
    fn fp8_variants_name_their_kernels_and_w8a8_quantizes_into_the_workspace() {
        let p = plan_with(
            16,
            7168,
            2048,
            256,
            8,
            DType::BF16,
            Precision::W8A16,
            &limits(),
        )
        .unwrap();
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_w8a16_bf16");
        assert_eq!(p.launches[2].kernel, "moemla_moe_down_w8a16_bf16");
        assert_eq!(p.workspace.act.bytes, 128 * 64 * 2048 * 2);
        assert_eq!(p.quant_x, None);
        // H 200, I 136: partial 128-blocks (2 and 2 groups).
        let p = plan_with(5, 200, 136, 3, 2, DType::F16, Precision::W8A8, &limits()).unwrap();
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_w8a8_f16");
        assert_eq!(p.launches[2].kernel, "moemla_moe_down_w8a8_f16");
        let qx = p.quant_x.clone().unwrap();
        assert_eq!(
            (qx.kernel.as_str(), qx.grid),
            ("moemla_moe_quant_f16", [5, 2, 1])
        );
        let rows = p.max_tiles * TILE_M;
        let qa = p.quant_act.clone().unwrap();
        assert_eq!(
            (qa.kernel.as_str(), qa.grid),
            ("moemla_moe_quant_f32", [rows as u32, 2, 1])
        );
        let ws = p.workspace;
        // act in f32; codes one byte each; scales one f32 per group.
        assert_eq!(ws.act.bytes, rows * 136 * 4);
        assert_eq!(ws.x_codes.bytes, 5 * 200);
        assert_eq!(ws.x_scales.bytes, 5 * 2 * 4);
        assert_eq!(ws.act_codes.bytes, rows * 136);
        assert_eq!(ws.act_scales.bytes, rows * 2 * 4);
        assert_eq!(ws.bytes, ws.act_scales.offset + ws.act_scales.bytes);
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
    fn shared_experts_add_three_launches_their_workspace_and_the_shared_combine() {
        let l = limits();
        let base = plan(70, 40, 24, 5, 3, DType::BF16, &l).unwrap();
        assert_eq!(base.shared, None);
        let ws = base.workspace;
        assert_eq!(
            ws.shared_rows.bytes + ws.shared_act.bytes + ws.yshared.bytes,
            0
        );
        assert_eq!(ws.shared_meta.bytes + ws.shared_tile_expert.bytes, 0);
        // T 70: 2 tiles per shared expert; S 2, Is 100 (2 column tiles).
        let sh = SharedSizes {
            count: 2,
            inter: 100,
        };
        let p = plan_with_shared(
            70,
            40,
            24,
            5,
            3,
            DType::BF16,
            Precision::Native,
            Some(sh),
            &l,
        )
        .unwrap();
        // The routed part is unchanged but for the combine.
        assert_eq!(p.launches[..3], base.launches[..3]);
        assert_eq!(p.launches[3].kernel, "moemla_moe_combine_shared_bf16");
        assert_eq!(p.launches[3].grid, [70, 1, 1]);
        let s = p.shared.clone().unwrap();
        assert_eq!(s.seg_tiles, 2);
        let got: Vec<(&str, [u32; 3], [u32; 3])> = s
            .launches
            .iter()
            .map(|l| (l.kernel.as_str(), l.grid, l.block))
            .collect();
        assert_eq!(
            got,
            [
                ("moemla_moe_shared_rows", [4, 1, 1], [64, 1, 1]),
                ("moemla_moe_gate_up_bf16", [4, 2, 1], [128, 1, 1]),
                ("moemla_moe_down_bf16", [4, 1, 1], [128, 1, 1]),
            ]
        );
        let ws = p.workspace;
        assert_eq!(ws.shared_rows.bytes, 4 * 64 * 4);
        assert_eq!(ws.shared_tile_expert.bytes, 4 * 4);
        assert_eq!(ws.shared_meta.bytes, 4);
        assert_eq!(ws.shared_act.bytes, 4 * 64 * 100 * 2);
        assert_eq!(ws.yshared.bytes, 4 * 64 * 40 * 4);
        assert!(ws.shared_rows.offset >= ws.act_scales.offset + ws.act_scales.bytes);
        assert_eq!(ws.bytes, ws.yshared.offset + ws.yshared.bytes);
        // FP8 routed weights keep their variants; the shared experts stay run-dtype.
        let p =
            plan_with_shared(5, 200, 136, 3, 2, DType::F16, Precision::W8A8, Some(sh), &l).unwrap();
        assert_eq!(p.launches[1].kernel, "moemla_moe_gate_up_w8a8_f16");
        assert_eq!(
            p.shared.unwrap().launches[1].kernel,
            "moemla_moe_gate_up_f16"
        );
    }

    #[test]
    fn shared_sizes_past_the_int_limit_are_plan_errors() {
        let l = limits();
        let at = |count, inter, tokens| {
            let sh = Some(SharedSizes { count, inter });
            plan_with_shared(tokens, 64, 64, 8, 1, DType::F32, Precision::Native, sh, &l)
                .unwrap_err()
                .what
        };
        assert!(at(1, 1 << 31, 4).starts_with("Is = "));
        assert!(at(1 << 31, 64, 4).starts_with("S = "));
        // 2^26 tokens: 2^20 tiles per shared expert; S 2^11 makes 2^31 tiles.
        assert!(at(1 << 11, 64, 1 << 26).starts_with("S * T / 64 tiles = "));
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
