//! The paged cache that `mla_decode`, `mla_sparse_decode`, `dsa_indexer_topk` and
//! `mla_cache_write` share: a cache `[num_blocks, block_size, ...]`, and for the ops that
//! walk it per sequence, a block table `[B, max_blocks]` and sequence lengths `[B]`, both
//! I32. Each check is one phase (rank, dtype or dims), so every op keeps its error order:
//! it calls a phase where its own checks of that kind put it.

use super::checks;
use crate::{DType, DeviceTensor, Error, Op, Result};

/// The cache's `num_blocks` and `block_size` (dims 0 and 1), each at least 1.
pub(crate) fn blocks(op: Op, arg: &'static str, cache: &DeviceTensor) -> Result<[usize; 2]> {
    checks::dim_nonzero(op, arg, cache, 0, "num_blocks")?;
    checks::dim_nonzero(op, arg, cache, 1, "block_size")?;
    Ok([0, 1].map(|d| cache.dims()[d]))
}

/// A cache of one kv head (dim 2).
pub(crate) fn one_kv_head(op: Op, cache: &DeviceTensor) -> Result<()> {
    checks::dim_eq(op, "kv_cache", cache, 2, "Hkv", 1, "one kv head")
}

/// The `fp8_ds_v32` cache is U8 (656-byte rows).
pub(crate) fn fp8_bytes(op: Op, cache: &DeviceTensor) -> Result<()> {
    if cache.dtype() == DType::U8 {
        return Ok(());
    }
    Err(Error::DType {
        op,
        arg: "kv_cache",
        expected: "U8 (kv_format fp8_ds_v32: 656-byte rows)".into(),
        got: cache.dtype(),
    })
}

/// Every flat slot (`num_blocks * block_size`, without overflow) must be an I32 index.
pub(crate) fn slots_fit_i32(op: Op, arg: &'static str, cache: &DeviceTensor) -> Result<()> {
    let [num_blocks, block_size] = [0, 1].map(|d| cache.dims()[d]);
    let slots = num_blocks.checked_mul(block_size);
    if slots.is_some_and(|s| s <= i32::MAX as usize) {
        return Ok(());
    }
    Err(checks::dim_error(
        op,
        arg,
        cache,
        0,
        "num_blocks",
        format!("<= 2^31 - 1 slots in all (block_size {block_size}): indices are I32"),
    ))
}

/// A block table `[B, max_blocks]` and sequence lengths `[B]`, both I32.
pub(crate) struct BlockTable<'a> {
    /// The op checked.
    pub op: Op,
    /// `block_table` `[B, max_blocks]`.
    pub block_table: &'a DeviceTensor,
    /// `cache_seqlens` `[B]`.
    pub cache_seqlens: &'a DeviceTensor,
}

impl BlockTable<'_> {
    /// Rank 2 and rank 1.
    pub(crate) fn ranks(&self) -> Result<()> {
        let op = self.op;
        checks::rank(op, "block_table", self.block_table, 2, "[B, max_blocks]")?;
        checks::rank(op, "cache_seqlens", self.cache_seqlens, 1, "[B]")
    }

    /// Both I32.
    pub(crate) fn dtypes(&self) -> Result<()> {
        let op = self.op;
        checks::dtype_in(op, "block_table", self.block_table, &[DType::I32])?;
        checks::dtype_in(op, "cache_seqlens", self.cache_seqlens, &[DType::I32])
    }

    /// B of both equals `batch` (B of q), `max_blocks` >= 1; returns `max_blocks`.
    pub(crate) fn dims(&self, batch: usize) -> Result<usize> {
        let (op, table, lens) = (self.op, self.block_table, self.cache_seqlens);
        checks::dim_eq(op, "block_table", table, 0, "B", batch, "B of q")?;
        checks::dim_nonzero(op, "block_table", table, 1, "max_blocks")?;
        checks::dim_eq(op, "cache_seqlens", lens, 0, "B", batch, "B of q")?;
        Ok(table.dims()[1])
    }
}
