//! `dsa_indexer_topk`: `mla_decode`'s index check (`moemla_mla_check`, the same rules for
//! `cache_seqlens` and `block_table`), the tiled scores of every attended position, and
//! a block-wide radix top-k per query row (kernels/README.md, dsa_indexer_topk.cu).

use crate::mla::CHECK_BLOCK;
use crate::{
    ceil_div, check_launch, checked, dtype_suffix, fits, layout, DeviceLimits, Launch, PlanResult,
    Region, INT_LIMIT,
};
use moemla_core::{DType, Op};

/// Cache positions per scores block (`MOEMLA_IDX_BN`).
pub const SCORES_POSITIONS: usize = 64;
/// Threads per scores block (`MOEMLA_IDX_THREADS`).
pub const SCORES_BLOCK: u32 = 256;
/// Static shared memory of `moemla_dsa_indexer_scores_*`: the query tile (32 heads x 32
/// dims f32), the key tile (64 x 33 f32), the head-group partial sums (4 x 64 f32) and the
/// tile's cache rows (64 i64).
pub const SCORES_STATIC_SHARED_BYTES: u32 = (32 * 32 + 64 * 33 + 4 * 64) * 4 + 64 * 8;
/// Threads per top-k block (`MOEMLA_IDX_TOPK_THREADS`).
pub const TOPK_BLOCK: u32 = 512;
/// Static shared memory of `moemla_dsa_indexer_topk`: the radix histogram (256 ints), the
/// per-thread counts (2 per thread) and two broadcast ints.
pub const TOPK_STATIC_SHARED_BYTES: u32 = (256 + 2 * TOPK_BLOCK + 2) * 4;

/// Problem sizes of a `dsa_indexer_topk` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerSizes {
    /// B.
    pub batch: usize,
    /// Sq.
    pub s_q: usize,
    /// Hi: indexer heads.
    pub h_i: usize,
    /// Di: indexer head width.
    pub d_i: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Positions kept per query.
    pub top_k: usize,
}

impl IndexerSizes {
    /// The sizes of a validated call.
    pub fn of(call: &moemla_core::calls::DsaIndexerTopkCall<'_>) -> Self {
        IndexerSizes {
            batch: call.batch,
            s_q: call.s_q,
            h_i: call.h_i,
            d_i: call.d_i,
            num_blocks: call.num_blocks,
            block_size: call.block_size,
            max_blocks: call.max_blocks,
            top_k: call.params.top_k,
        }
    }
}

/// Where the workspace buffers lie (byte regions); neither needs initialising: the top-k
/// kernel reads only the scores the scores kernel wrote (positions below each row's
/// limit) and the candidates it wrote itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexerWorkspace {
    /// `scores`: f32, `B * Sq * cap` (cap = max_blocks * block_size).
    pub scores: Region,
    /// `cand`: i32, `B * Sq * cand_stride`.
    pub cand: Region,
    /// Total bytes.
    pub bytes: usize,
}

/// The launches of one `dsa_indexer_topk` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexerPlan {
    /// `max_blocks * block_size`: the scores row length.
    pub cap: usize,
    /// Candidate ints per query row: the power of two >= min(top_k, cap) (the bitonic
    /// sort's width).
    pub cand_stride: usize,
    /// Workspace layout.
    pub workspace: IndexerWorkspace,
    /// `moemla_mla_check` (mla_decode.cu), `moemla_dsa_indexer_scores_*`,
    /// `moemla_dsa_indexer_topk`, in order.
    pub launches: [Launch; 3],
}

/// Plans `dsa_indexer_topk` with run dtype `dtype`. Every size is checked: a problem the
/// kernels' `int` parameters, the grid or the address space cannot hold is a
/// [`crate::PlanError`]. The outputs ([B, Sq, top_k] I32 and F32, 4 bytes an element) are
/// sized first, before the `int` limits and the workspace.
pub fn plan(s: &IndexerSizes, dtype: DType, limits: &DeviceLimits) -> PlanResult<IndexerPlan> {
    let op = Op::DsaIndexerTopk;
    let mul = |what: &str, a: usize, b: usize| checked(op, what, a.checked_mul(b));
    let rows = mul("B * Sq", s.batch, s.s_q)?;
    let out_bytes = rows.checked_mul(s.top_k).and_then(|n| n.checked_mul(4));
    checked(op, "output bytes (B * Sq * top_k * 4)", out_bytes)?;
    let cap = mul("max_blocks * block_size", s.max_blocks, s.block_size)?;
    let slots = mul("num_blocks * block_size", s.num_blocks, s.block_size)?;
    let table_len = mul("B * max_blocks", s.batch, s.max_blocks)?;
    for (what, v) in [
        ("B", s.batch),
        ("Sq", s.s_q),
        ("Hi", s.h_i),
        ("Di", s.d_i),
        ("num_blocks", s.num_blocks),
        ("block_size", s.block_size),
        ("max_blocks", s.max_blocks),
        ("top_k", s.top_k),
        ("max_blocks * block_size", cap),
        // Slots are written as I32, and flag positions of the table are below 2^31.
        ("num_blocks * block_size", slots),
        ("B * max_blocks", table_len),
        ("B * Sq", rows),
    ] {
        fits(op, what, v, INT_LIMIT)?;
    }
    let kept = s.top_k.min(cap);
    let cand_stride = checked(
        op,
        "top_k rounded to a power of two",
        kept.checked_next_power_of_two(),
    )?;
    fits(
        op,
        "top_k rounded to a power of two",
        cand_stride,
        INT_LIMIT,
    )?;
    let (regions, bytes) = layout(
        op,
        [
            (
                "indexer scores",
                rows.checked_mul(cap).and_then(|n| n.checked_mul(4)),
            ),
            (
                "indexer candidates",
                rows.checked_mul(cand_stride).and_then(|n| n.checked_mul(4)),
            ),
        ],
    )?;
    let grid = |what: &str, v: usize| fits(op, what, v, INT_LIMIT);
    let launches = [
        Launch {
            kernel: "moemla_mla_check".into(),
            grid: [
                grid("check blocks", ceil_div(table_len, CHECK_BLOCK as usize))?,
                1,
                1,
            ],
            block: [CHECK_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: format!("moemla_dsa_indexer_scores_{}", dtype_suffix(dtype)),
            grid: [
                grid("position tiles", ceil_div(cap, SCORES_POSITIONS))?,
                grid("Sq", s.s_q)?,
                grid("B", s.batch)?,
            ],
            block: [SCORES_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: "moemla_dsa_indexer_topk".into(),
            grid: [grid("B * Sq", rows)?, 1, 1],
            block: [TOPK_BLOCK, 1, 1],
            shared_bytes: 0,
        },
    ];
    check_launch(op, &launches[0], 0, limits)?;
    check_launch(op, &launches[1], SCORES_STATIC_SHARED_BYTES, limits)?;
    check_launch(op, &launches[2], TOPK_STATIC_SHARED_BYTES, limits)?;
    Ok(IndexerPlan {
        cap,
        cand_stride,
        workspace: IndexerWorkspace {
            scores: regions[0],
            cand: regions[1],
            bytes,
        },
        launches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v32(batch: usize, s_q: usize, seqlen: usize, top_k: usize) -> IndexerSizes {
        IndexerSizes {
            batch,
            s_q,
            h_i: 64,
            d_i: 128,
            num_blocks: batch * seqlen / 64,
            block_size: 64,
            max_blocks: seqlen / 64,
            top_k,
        }
    }

    fn h100() -> DeviceLimits {
        DeviceLimits::cuda(132, 227 * 1024, true)
    }

    #[test]
    fn deepseek_indexer_shape_plans_check_scores_and_topk() {
        // Hi 64, Di 128, seqlen 8192, top_k 2048, B 4, MTP Sq 2.
        let p = plan(&v32(4, 2, 8192, 2048), DType::BF16, &h100()).unwrap();
        assert_eq!(p.cap, 8192);
        assert_eq!(p.cand_stride, 2048);
        assert_eq!(p.launches[0].kernel, "moemla_mla_check");
        assert_eq!(
            p.launches[0].grid,
            [(4 * 128usize).div_ceil(256) as u32, 1, 1]
        );
        assert_eq!(p.launches[1].kernel, "moemla_dsa_indexer_scores_bf16");
        assert_eq!(p.launches[1].grid, [8192 / 64, 2, 4]);
        assert_eq!(p.launches[1].block, [256, 1, 1]);
        assert_eq!(p.launches[2].kernel, "moemla_dsa_indexer_topk");
        assert_eq!(p.launches[2].grid, [8, 1, 1]);
        assert_eq!(p.workspace.scores.bytes, 8 * 8192 * 4);
        assert_eq!(p.workspace.cand.bytes, 8 * 2048 * 4);
        assert_eq!(p.workspace.cand.offset % crate::WORKSPACE_ALIGN, 0);
        // Static shared memory fits HIP's 64 KiB of LDS.
        let hip = DeviceLimits::hip(304, 64, 64 * 1024);
        assert!(plan(&v32(4, 2, 8192, 2048), DType::BF16, &hip).is_ok());
    }

    #[test]
    fn candidates_are_top_k_or_the_capacity_rounded_up_to_a_power_of_two() {
        let mut s = v32(1, 1, 1024, 100);
        assert_eq!(plan(&s, DType::F32, &h100()).unwrap().cand_stride, 128);
        // top_k beyond the capacity: only cap positions can be chosen.
        s.top_k = 5000;
        let p = plan(&s, DType::F32, &h100()).unwrap();
        assert_eq!(p.cand_stride, 1024);
        s.top_k = 1;
        assert_eq!(plan(&s, DType::F16, &h100()).unwrap().cand_stride, 1);
    }

    #[test]
    fn sizes_that_overflow_or_exceed_the_grid_are_plan_errors() {
        let mut s = v32(1, 1, 1024, 64);
        s.num_blocks = usize::MAX;
        let e = plan(&s, DType::BF16, &h100()).unwrap_err();
        assert!(e.what.contains("num_blocks * block_size"), "{e:?}");
        assert_eq!(e.op, Op::DsaIndexerTopk);
        // Slots past i32 (they are written as I32).
        let mut s = v32(1, 1, 1024, 64);
        s.num_blocks = 1 << 26;
        let e = plan(&s, DType::BF16, &h100()).unwrap_err();
        assert!(e.what.starts_with("num_blocks * block_size = "), "{e:?}");
        // Sq beyond grid y (65535).
        let e = plan(&v32(1, 70_000, 1024, 64), DType::BF16, &h100()).unwrap_err();
        assert!(e.what.contains("grid y"), "{e:?}");
        // B beyond grid z.
        let mut s = v32(1 << 17, 1, 1024, 64);
        s.num_blocks = 1;
        s.max_blocks = 1;
        let e = plan(&s, DType::F32, &h100()).unwrap_err();
        assert!(e.what.contains("grid z"), "{e:?}");
        // top_k past the kernels' int (its outputs, 2^33 bytes, still fit).
        let e = plan(&v32(1, 1, 1024, 1 << 31), DType::F32, &h100()).unwrap_err();
        assert!(e.what.starts_with("top_k = 2147483648"), "{e:?}");
    }

    #[test]
    fn an_output_size_past_the_address_space_is_a_plan_error_before_any_other_check() {
        let overflow = |s: &IndexerSizes| {
            let e = plan(s, DType::F32, &h100()).unwrap_err();
            assert_eq!(e.op, Op::DsaIndexerTopk);
            assert_eq!(e.what, "output bytes (B * Sq * top_k * 4)", "{e:?}");
            assert_eq!(e.reason, "overflows the address space");
        };
        // B * Sq * top_k = 2^62 elements: 2^64 bytes, one past usize.
        overflow(&v32(1 << 20, 1 << 10, 1024, 1 << 32));
        // B * Sq * top_k itself overflows; so would top_k's int limit and the grid.
        overflow(&v32(1, 1, 1024, usize::MAX));
        // One element less than 2^62 would be 2^64 - 4 bytes: the output check passes and
        // the int limit on top_k reports it.
        let e = plan(&v32(1, 1, 1024, usize::MAX / 4), DType::F32, &h100()).unwrap_err();
        assert!(e.what.starts_with("top_k = "), "{e:?}");
    }

    #[test]
    fn hip_counts_threads_per_grid_dimension() {
        // 2^23 query rows of 512 threads: 2^32 threads in x, one more than HIP allows.
        let hip = DeviceLimits::hip(304, 64, 64 * 1024);
        let mut s = v32(1 << 13, 1 << 10, 1024, 8);
        s.num_blocks = 1;
        s.max_blocks = 1;
        let e = plan(&s, DType::F32, &hip).unwrap_err();
        assert!(e.what.contains("threads"), "{e:?}");
        assert!(plan(&s, DType::F32, &h100()).is_ok());
    }
}
