//! Checks of index *contents* for backends that can read them on the host (the CPU
//! backend, or a device backend that has copied a flagged tensor back). Each returns the
//! contract's [`Error::IndexOutOfRange`] for the first bad element in row-major order.

use crate::calls::{MlaDecodeCall, MoeExpertsCall};
use crate::{Error, Op, Result};

/// Every id of `topk_ids` must lie in `[-1, E)`.
pub fn check_topk_ids(call: &MoeExpertsCall<'_>, ids: &[i32]) -> Result<()> {
    let experts = call.experts as i64;
    match ids
        .iter()
        .position(|&id| !(-1..experts).contains(&(id as i64)))
    {
        None => Ok(()),
        Some(at) => Err(Error::index_out_of_range(
            Op::MoeExperts,
            "topk_ids",
            call.topk_ids.shape(),
            at,
            ids[at] as i64,
            format!("[-1, {experts})"),
        )),
    }
}

/// Every sequence length must lie in `[0, max_blocks * block_size]`, and every block-table
/// entry covering a position below its row's length must lie in `[0, num_blocks)`. Entries
/// past a row's length are never looked at.
pub fn check_mla_indices(
    call: &MlaDecodeCall<'_>,
    block_table: &[i32],
    cache_seqlens: &[i32],
) -> Result<()> {
    let capacity = (call.max_blocks * call.block_size) as i64;
    if let Some(b) = cache_seqlens
        .iter()
        .position(|&len| !(0..=capacity).contains(&(len as i64)))
    {
        return Err(Error::index_out_of_range(
            Op::MlaDecode,
            "cache_seqlens",
            call.cache_seqlens.shape(),
            b,
            cache_seqlens[b] as i64,
            format!("[0, {capacity}] (max_blocks * block_size)"),
        ));
    }
    let num_blocks = call.num_blocks as i64;
    for (b, &len) in cache_seqlens.iter().enumerate() {
        let used = (len as usize).div_ceil(call.block_size);
        let row = &block_table[b * call.max_blocks..][..used];
        if let Some(j) = row
            .iter()
            .position(|&blk| !(0..num_blocks).contains(&(blk as i64)))
        {
            return Err(Error::index_out_of_range(
                Op::MlaDecode,
                "block_table",
                call.block_table.shape(),
                b * call.max_blocks + j,
                row[j] as i64,
                format!("[0, {num_blocks}) (num_blocks)"),
            ));
        }
    }
    Ok(())
}
