//! `mla_sparse_decode`: index check, split-K decode over each query's listed slots, split
//! combine with the attention sink. The kernels are `mla_decode`'s (one template in
//! mla_decode.cu): a block serves one query row (b, i) and a tile of its heads, and its
//! positions are the entries `[0, topk_length[b])` of `indices[b, i, :]`.

use crate::mla::{choose_splits, decode_shared_bytes, split_k, tiles, MlaPlan, SplitK};
use crate::{ceil_div, checked, fits, round_up, DeviceLimits, PlanResult, INT_LIMIT};
use moemla_core::{DType, Op};

/// Problem sizes of an `mla_sparse_decode` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseSizes {
    /// B.
    pub batch: usize,
    /// Sq.
    pub s_q: usize,
    /// Hq.
    pub h_q: usize,
    /// Dqk.
    pub d_qk: usize,
    /// Dv (< Dqk).
    pub d_v: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Index entries per query.
    pub topk: usize,
}

impl SparseSizes {
    /// The sizes of a validated call.
    pub fn of(call: &moemla_core::calls::MlaSparseDecodeCall<'_>) -> Self {
        SparseSizes {
            batch: call.batch,
            s_q: call.s_q,
            h_q: call.h_q,
            d_qk: call.d_qk,
            d_v: call.d_v,
            num_blocks: call.num_blocks,
            block_size: call.block_size,
            topk: call.topk,
        }
    }
}

/// Dynamic shared memory of `moemla_mla_sparse_decode_*`: the `mla_decode` layout followed
/// by one `int` flag per staged column (is its entry a slot); `None` on overflow.
pub fn sparse_shared_bytes(
    elem: usize,
    d_qk: usize,
    d_v: usize,
    block_q: usize,
    block_n: usize,
) -> Option<usize> {
    decode_shared_bytes(elem, d_qk, d_v, block_q, block_n)?
        .checked_add(round_up(block_n.checked_mul(4)?, 16)?)
}

/// Plans `mla_sparse_decode` with run dtype `dtype` over a dense cache (`fp8` false) or
/// the 656-byte `fp8_ds_v32` cache (`fp8` true). Every size is checked: a problem the
/// kernels' `int` parameters, the grid or the address space cannot hold is a
/// [`crate::PlanError`].
pub fn plan(
    s: &SparseSizes,
    dtype: DType,
    fp8: bool,
    limits: &DeviceLimits,
) -> PlanResult<MlaPlan> {
    let op = Op::MlaSparseDecode;
    let mul = |what: &str, a: usize, b: usize| checked(op, what, a.checked_mul(b));
    let slots = mul("num_blocks * block_size", s.num_blocks, s.block_size)?;
    let queries = mul("B * Sq", s.batch, s.s_q)?;
    let entries = mul("B * Sq * topk", queries, s.topk)?;
    let out_rows = mul("B * Sq * Hq", queries, s.h_q)?;
    for (what, v) in [
        ("B", s.batch),
        ("Sq", s.s_q),
        ("Hq", s.h_q),
        ("Dqk", s.d_qk),
        ("num_blocks", s.num_blocks),
        ("block_size", s.block_size),
        ("topk", s.topk),
        ("num_blocks * block_size", slots),
        ("B * Sq * topk", entries),
        ("B * Sq * Hq", out_rows),
    ] {
        fits(op, what, v, INT_LIMIT)?;
    }
    let elem = dtype.size_in_bytes();
    let (block_q, block_n) = tiles(op, (s.d_qk, s.d_v), dtype, limits, |bq, bn| {
        sparse_shared_bytes(elem, s.d_qk, s.d_v, bq, bn)
    })?;
    let h_tiles = ceil_div(s.h_q, block_q);
    let num_splits = choose_splits(
        queries.saturating_mul(h_tiles),
        s.topk,
        limits.compute_units as usize,
    );
    split_k(
        SplitK {
            op,
            prefix: "moemla_mla_sparse",
            check_items: entries,
            decode_yz: [("head tiles", h_tiles), ("B * Sq", queries)],
            num_splits,
            tile: (block_q, block_n),
            smem: sparse_shared_bytes(elem, s.d_qk, s.d_v, block_q, block_n),
            out_rows,
            d_v: s.d_v,
        },
        dtype,
        fp8,
        limits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mla::split_range;
    use crate::mla::tests::h100;

    fn v32(batch: usize, s_q: usize, h_q: usize, topk: usize) -> SparseSizes {
        SparseSizes {
            batch,
            s_q,
            h_q,
            d_qk: 576,
            d_v: 512,
            num_blocks: 1024,
            block_size: 64,
            topk,
        }
    }

    #[test]
    fn shared_memory_is_the_decode_layout_plus_column_flags() {
        // bf16, Dqk 576, Dv 512, 16 rows, 64 columns: 64 int flags after the decode layout.
        let dense = decode_shared_bytes(2, 576, 512, 16, 64).unwrap();
        assert_eq!(sparse_shared_bytes(2, 576, 512, 16, 64), Some(dense + 256));
        // 16 columns of f32, Dqk 5: 64 bytes of flags; an unaligned count rounds up.
        let dense = decode_shared_bytes(4, 5, 3, 1, 16).unwrap();
        assert_eq!(sparse_shared_bytes(4, 5, 3, 1, 16), Some(dense + 64));
        assert_eq!(sparse_shared_bytes(4, 5, 3, 1, usize::MAX / 2), None);
    }

    #[test]
    fn flashmla_sparse_shape_plans_the_fp8_kernels_with_tensor_tiles() {
        // b 128, s_q 1, h_q 128, topk 2048, FP8 cache.
        let p = plan(&v32(128, 1, 128, 2048), DType::BF16, true, &h100()).unwrap();
        assert_eq!(p.block_q, 16);
        assert_eq!(p.launches[0].kernel, "moemla_mla_sparse_check");
        assert_eq!(p.launches[0].grid, [1024, 1, 1]); // 128 * 2048 / 256
        assert_eq!(p.launches[1].kernel, "moemla_mla_sparse_decode_fp8_bf16");
        assert_eq!(p.launches[1].grid[1..], [8, 128]);
        assert_eq!(p.launches[2].kernel, "moemla_mla_sparse_combine_bf16");
        assert_eq!(p.launches[2].grid, [128 * 128, 1, 1]);
        let smem = sparse_shared_bytes(2, 576, 512, 16, p.block_n).unwrap();
        assert_eq!(p.launches[1].shared_bytes as usize, smem);
        // 1024 blocks already fill 132 SMs twice: one split.
        assert_eq!(p.num_splits, 1);
        let rows = 128 * 128;
        assert_eq!(p.workspace.lse_part.bytes, rows * 4);
        assert_eq!(p.o_bytes, rows * 512 * 2);
    }

    #[test]
    fn a_lone_decode_query_splits_its_entries() {
        // One query, 16 heads: split by topk (2048 / 256 = 8 at most), splits tile it.
        let p = plan(&v32(1, 1, 16, 2048), DType::F16, false, &h100()).unwrap();
        assert_eq!(p.launches[1].kernel, "moemla_mla_sparse_decode_f16");
        assert_eq!(p.num_splits, 8);
        let covered: usize = (0..p.num_splits)
            .map(|k| {
                let (a, b) = split_range(2048, k, p.num_splits, p.block_n);
                b - a
            })
            .sum();
        assert_eq!(covered, 2048);
        // A short list: one split.
        let p = plan(&v32(1, 1, 16, 64), DType::F32, false, &h100()).unwrap();
        assert_eq!(p.num_splits, 1);
        assert_eq!(p.launches[1].kernel, "moemla_mla_sparse_decode_f32");
    }

    #[test]
    fn sizes_that_overflow_or_exceed_the_grid_are_plan_errors() {
        let mut s = v32(1, 1, 16, 2048);
        s.num_blocks = usize::MAX;
        let e = plan(&s, DType::BF16, false, &h100()).unwrap_err();
        assert!(e.what.contains("num_blocks * block_size"), "{e:?}");
        let mut s = v32(1 << 12, 1 << 10, 1, 1024);
        s.num_blocks = 1;
        let e = plan(&s, DType::BF16, false, &h100()).unwrap_err();
        assert!(e.what.contains("B * Sq * topk"), "{e:?}");
        // Prefill: B 1, Sq beyond grid z (65535 on CUDA) is Unsupported, not a wrap.
        let e = plan(&v32(1, 70_000, 1, 16), DType::BF16, false, &h100()).unwrap_err();
        assert_eq!(e.op, Op::MlaSparseDecode);
        // A head dim too wide for shared memory.
        let mut s = v32(1, 1, 16, 64);
        s.d_qk = 1 << 20;
        s.d_v = 512;
        let e = plan(&s, DType::F32, false, &h100()).unwrap_err();
        assert!(e.reason.contains("shared memory"), "{e:?}");
    }
}
