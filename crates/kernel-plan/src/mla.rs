//! `mla_decode`: index check, split-KV decode over the paged cache, split combine.

use crate::{
    ceil_div, check_launch, checked, dtype_suffix, fits, layout, round_up, DeviceLimits, Launch,
    PlanError, PlanResult, Region, INT_LIMIT,
};
use moemla_core::{DType, Op};

/// Threads per decode block (eight 32-lane warps on CUDA: with two blocks per SM, 16 warps
/// hide each other's load and shared-memory latency; with 4 warps a block the H200 issued
/// at 1.2 IPC with no warp eligible in 70% of cycles, Nsight Compute 2026-12-04).
pub const DECODE_BLOCK: u32 = 256;
/// Threads per check block.
pub const CHECK_BLOCK: u32 = 256;
/// Threads per combine block.
pub const COMBINE_BLOCK: u32 = 128;
/// Most splits of one sequence (the combine kernel keeps one weight per split in shared
/// memory).
pub const MAX_SPLITS: usize = 64;
/// Fewest cache positions worth a split of their own.
pub const MIN_SPLIT_LEN: usize = 256;
/// Static shared memory of `moemla_mla_combine_*`: one weight per split and a sum.
pub const COMBINE_STATIC_SHARED_BYTES: u32 = (MAX_SPLITS as u32 + 1) * 4;

/// Problem sizes of an `mla_decode` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaSizes {
    /// B.
    pub batch: usize,
    /// Sq.
    pub s_q: usize,
    /// Hq.
    pub h_q: usize,
    /// Hkv (divides Hq).
    pub h_kv: usize,
    /// Dqk.
    pub d_qk: usize,
    /// Dv (< Dqk).
    pub d_v: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
}

impl MlaSizes {
    /// The sizes of a validated call.
    pub fn of(call: &moemla_core::calls::MlaDecodeCall<'_>) -> Self {
        MlaSizes {
            batch: call.batch,
            s_q: call.s_q,
            h_q: call.h_q,
            h_kv: call.h_kv,
            d_qk: call.d_qk,
            d_v: call.d_v,
            num_blocks: call.num_blocks,
            block_size: call.block_size,
            max_blocks: call.max_blocks,
        }
    }
}

/// Where the workspace buffers lie in the op's workspace (byte regions). Neither needs
/// initialising: the decode kernel writes every split of every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaWorkspace {
    /// `o_part`: f32, `num_splits * B * Sq * Hq * Dv`.
    pub o_part: Region,
    /// `lse_part`: f32, `num_splits * B * Sq * Hq`.
    pub lse_part: Region,
    /// Total bytes.
    pub bytes: usize,
}

/// The launches of one `mla_decode` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlaPlan {
    /// Splits of each sequence's positions.
    pub num_splits: usize,
    /// Query rows per decode block.
    pub block_q: usize,
    /// Cache positions per inner step.
    pub block_n: usize,
    /// Workspace layout.
    pub workspace: MlaWorkspace,
    /// Bytes of `o` [B, Sq, Hq, Dv] in the run dtype.
    pub o_bytes: usize,
    /// Bytes of `lse` [B, Hq, Sq] f32.
    pub lse_bytes: usize,
    /// `moemla_mla_check`, `moemla_mla_decode_*`, `moemla_mla_combine_*`, in order
    /// (`mla_sparse_decode`: their `moemla_mla_sparse_*` counterparts).
    pub launches: [Launch; 3],
}

/// Dynamic shared memory of `moemla_mla_decode_*` (the layout in kernels/README.md);
/// `None` on overflow.
pub fn decode_shared_bytes(
    elem: usize,
    d_qk: usize,
    d_v: usize,
    block_q: usize,
    block_n: usize,
) -> Option<usize> {
    let ks = round_up(d_qk, 16)?.checked_add(8)?;
    let os = round_up(d_v, 8)?;
    let ps = block_n.checked_add(8)?;
    let regions = [
        block_q.checked_mul(ks)?.checked_mul(elem)?,
        block_n.checked_mul(ks)?.checked_mul(elem)?,
        block_q.checked_mul(os)?.checked_mul(4)?,
        block_q.checked_mul(block_n)?.checked_mul(4)?,
        block_q.checked_mul(ps)?.checked_mul(elem)?,
        block_q.checked_mul(16)?,
    ];
    regions
        .iter()
        .try_fold(0usize, |sum, &r| sum.checked_add(round_up(r, 16)?))
}

/// The positions `[start, end)` of split `split` (of `num_splits`) of a sequence of
/// `seqlen` tokens, in steps of `block_n`: the kernel's rule, computed on device from the
/// real length. The splits tile `[0, seqlen)` exactly, each starting on a `block_n` step.
pub fn split_range(
    seqlen: usize,
    split: usize,
    num_splits: usize,
    block_n: usize,
) -> (usize, usize) {
    let len = ceil_div(seqlen, num_splits).next_multiple_of(block_n);
    let start = split.saturating_mul(len).min(seqlen);
    let end = start.saturating_add(len).min(seqlen);
    (start, end)
}

/// How many splits: as many as one wave of two blocks per SM holds (the tiles are sized so
/// that two share one), `floor(2 * SMs / blocks)`, so no wave runs part-empty; FlashMLA's
/// `get_mla_metadata` likewise divides the SMs among the (kv head, head block) pairs and
/// cuts each sequence into per-SM parts. At most [`MAX_SPLITS`] and
/// `ceil(capacity / MIN_SPLIT_LEN)`, and 1 where one split's blocks fill a wave already.
/// Where the tile fits only once per SM (f32 at the DeepSeek widths) a "wave" of this rule
/// is two real ones. FlashMLA's decode shape (128 blocks a split, 132 SMs) takes 2 splits, one
/// wave; rounding up to 3 gave 1.45 waves on the H200 (Nsight Compute, 2026-12-04).
pub fn choose_splits(blocks_per_split: usize, capacity: usize, compute_units: usize) -> usize {
    let one_wave = (2 * compute_units.max(1)) / blocks_per_split.max(1);
    let by_len = ceil_div(capacity.max(1), MIN_SPLIT_LEN);
    one_wave.min(by_len).clamp(1, MAX_SPLITS)
}

/// Plans `mla_decode` with run dtype `dtype`. Every size is checked: a problem the
/// kernels' `int` parameters, the grid or the address space cannot hold is a
/// [`PlanError`].
pub fn plan(s: &MlaSizes, dtype: DType, limits: &DeviceLimits) -> PlanResult<MlaPlan> {
    plan_with(s, dtype, false, limits)
}

/// [`plan`] over a dense cache (`fp8` false) or the 656-byte `fp8_ds_v32` cache (`fp8`
/// true: `moemla_mla_decode_fp8_*`, rows dequantized into the same K tile as they are
/// staged, so geometry and workspace are those of the dense plan).
pub fn plan_with(
    s: &MlaSizes,
    dtype: DType,
    fp8: bool,
    limits: &DeviceLimits,
) -> PlanResult<MlaPlan> {
    let op = Op::MlaDecode;
    let mul = |what: &str, a: usize, b: usize| checked(op, what, a.checked_mul(b));
    let capacity = mul("max_blocks * block_size", s.max_blocks, s.block_size)?;
    let table_len = mul("B * max_blocks", s.batch, s.max_blocks)?;
    let out_rows = mul("B * Sq * Hq", mul("B * Sq", s.batch, s.s_q)?, s.h_q)?;
    for (what, v) in [
        ("B", s.batch),
        ("Sq", s.s_q),
        ("Hq", s.h_q),
        ("Dqk", s.d_qk),
        ("num_blocks", s.num_blocks),
        ("block_size", s.block_size),
        ("max_blocks", s.max_blocks),
        ("max_blocks * block_size", capacity),
        ("B * max_blocks", table_len),
        ("B * Sq * Hq", out_rows),
    ] {
        fits(op, what, v, INT_LIMIT)?;
    }
    let elem = dtype.size_in_bytes();
    let (block_q, block_n) = tiles(op, (s.d_qk, s.d_v), dtype, limits, |bq, bn| {
        decode_shared_bytes(elem, s.d_qk, s.d_v, bq, bn)
    })?;
    let rows = mul("Sq * Hq / Hkv", s.s_q, s.h_q / s.h_kv)?;
    let m_tiles = ceil_div(rows, block_q);
    let bh = mul("B * Hkv", s.batch, s.h_kv)?;
    let num_splits = choose_splits(
        bh.saturating_mul(m_tiles),
        capacity,
        limits.compute_units as usize,
    );
    split_k(
        SplitK {
            op,
            prefix: "moemla_mla",
            check_items: table_len,
            decode_yz: [("query row tiles", m_tiles), ("B * Hkv", bh)],
            num_splits,
            tile: (block_q, block_n),
            smem: decode_shared_bytes(elem, s.d_qk, s.d_v, block_q, block_n),
            out_rows,
            d_v: s.d_v,
        },
        dtype,
        fp8,
        limits,
    )
}

/// What the plans of `mla_decode` and `mla_sparse_decode` (one kernel template) take
/// differently; [`split_k`] builds the rest of either alike.
pub(crate) struct SplitK {
    /// The op the errors name.
    pub(crate) op: Op,
    /// The entry points' common prefix (`moemla_mla`, `moemla_mla_sparse`).
    pub(crate) prefix: &'static str,
    /// Entries the check kernel reads, one thread each.
    pub(crate) check_items: usize,
    /// The decode grid's y and z, each with the name its plan error gives.
    pub(crate) decode_yz: [(&'static str, usize); 2],
    /// Splits of each query row's positions.
    pub(crate) num_splits: usize,
    /// The decode tile `(block_q, block_n)`.
    pub(crate) tile: (usize, usize),
    /// The decode kernel's dynamic shared memory at that tile (`None` on overflow).
    pub(crate) smem: Option<usize>,
    /// B * Sq * Hq.
    pub(crate) out_rows: usize,
    /// Dv.
    pub(crate) d_v: usize,
}

/// The check, decode and combine launches of a split-K MLA plan, checked against the
/// device, with the workspace and output sizes.
pub(crate) fn split_k(
    k: SplitK,
    dtype: DType,
    fp8: bool,
    limits: &DeviceLimits,
) -> PlanResult<MlaPlan> {
    let SplitK {
        op,
        prefix,
        check_items,
        decode_yz: [(y_what, y), (z_what, z)],
        num_splits,
        tile: (block_q, block_n),
        smem,
        out_rows,
        d_v,
    } = k;
    let mul = |what: &str, a: usize, b: usize| checked(op, what, a.checked_mul(b));
    let elem = dtype.size_in_bytes();
    let sfx = dtype_suffix(dtype);
    // tiles found a tile that fits max_shared_bytes (a u32).
    let smem = smem.and_then(|b| u32::try_from(b).ok()).unwrap_or(u32::MAX);
    let launches = [
        Launch {
            kernel: format!("{prefix}_check"),
            grid: [
                fits(
                    op,
                    "check blocks",
                    ceil_div(check_items, CHECK_BLOCK as usize),
                    INT_LIMIT,
                )?,
                1,
                1,
            ],
            block: [CHECK_BLOCK, 1, 1],
            shared_bytes: 0,
        },
        Launch {
            kernel: format!("{prefix}_decode_{}{sfx}", if fp8 { "fp8_" } else { "" }),
            grid: [
                fits(op, "splits", num_splits, INT_LIMIT)?,
                fits(op, y_what, y, INT_LIMIT)?,
                fits(op, z_what, z, INT_LIMIT)?,
            ],
            block: [DECODE_BLOCK, 1, 1],
            shared_bytes: smem,
        },
        Launch {
            kernel: format!("{prefix}_combine_{sfx}"),
            grid: [fits(op, "B * Sq * Hq", out_rows, INT_LIMIT)?, 1, 1],
            block: [COMBINE_BLOCK, 1, 1],
            shared_bytes: 0,
        },
    ];
    check_launch(op, &launches[0], 0, limits)?;
    check_launch(op, &launches[1], 0, limits)?;
    check_launch(op, &launches[2], COMBINE_STATIC_SHARED_BYTES, limits)?;
    let lse_len = mul("num_splits * B * Sq * Hq", num_splits, out_rows)?;
    let (r, bytes) = layout(
        op,
        [
            (
                "o_part",
                lse_len.checked_mul(d_v).and_then(|n| n.checked_mul(4)),
            ),
            ("lse_part", lse_len.checked_mul(4)),
        ],
    )?;
    let o_bytes = checked(
        op,
        "o",
        out_rows.checked_mul(d_v).and_then(|n| n.checked_mul(elem)),
    )?;
    Ok(MlaPlan {
        num_splits,
        block_q,
        block_n,
        workspace: MlaWorkspace {
            o_part: r[0],
            lse_part: r[1],
            bytes,
        },
        o_bytes,
        lse_bytes: mul("lse", out_rows, 4)?,
        launches,
    })
}

/// Shared memory the hardware reserves per resident block (CUDA: 1 KiB).
const PER_BLOCK_RESERVED: usize = 1024;

/// The tile to use. The tensor-core path needs 16 query rows and prefers the largest
/// `block_n` that lets two blocks share an SM (the kernel does not overlap its own loads
/// and math, so a second resident block hides the load latency), else the largest that
/// fits once. The portable path may shrink the row count too.
fn pick_tiles(
    bytes: impl Fn(usize, usize) -> Option<usize>,
    tensor_path: bool,
    max_smem: usize,
) -> Option<(usize, usize)> {
    let fits = |bq: usize, bn: usize| bytes(bq, bn).is_some_and(|b| b <= max_smem);
    if tensor_path {
        let per_sm = max_smem + PER_BLOCK_RESERVED;
        let twice = |bn: usize| {
            bytes(16, bn).is_some_and(|b| b <= max_smem && 2 * (b + PER_BLOCK_RESERVED) <= per_sm)
        };
        return [64, 32, 16]
            .into_iter()
            .find(|&bn| twice(bn))
            .or_else(|| [64, 32, 16].into_iter().find(|&bn| fits(16, bn)))
            .map(|bn| (16, bn));
    }
    [16, 8, 4, 2, 1]
        .into_iter()
        .flat_map(|bq| [32, 16].into_iter().map(move |bn| (bq, bn)))
        .find(|&(bq, bn)| fits(bq, bn))
}

/// The decode tile `(block_q, block_n)` for run dtype `dtype` whose shared memory
/// (`bytes(block_q, block_n)`) fits the device, or the typed error naming `(Dqk, Dv)`.
pub(crate) fn tiles(
    op: Op,
    (d_qk, d_v): (usize, usize),
    dtype: DType,
    limits: &DeviceLimits,
    bytes: impl Fn(usize, usize) -> Option<usize>,
) -> PlanResult<(usize, usize)> {
    let tensor_path = limits.tensor_cores && matches!(dtype, DType::F16 | DType::BF16);
    pick_tiles(&bytes, tensor_path, limits.max_shared_bytes as usize).ok_or_else(|| PlanError {
        op,
        what: format!("Dqk = {d_qk}, Dv = {d_v}"),
        reason: match bytes(1, 16) {
            Some(b) => format!(
                "the smallest decode tile needs {b} bytes of shared memory, the device allows {}",
                limits.max_shared_bytes
            ),
            None => "the decode tile's shared memory overflows the address space".into(),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests;
