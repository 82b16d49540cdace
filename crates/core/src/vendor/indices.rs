//! Checks of index *contents* for backends that can read them on the host (the CPU
//! backend, or a device backend that has copied a flagged tensor back). Each returns the
//! contract's [`Error::IndexOutOfRange`] for the first bad element in row-major order.

use crate::calls::{
    DsaIndexerTopkCall, MlaCacheWriteCall, MlaDecodeCall, MlaKvQuantizeCall, MlaSparseDecodeCall,
    MoeExpertsCall, MoeRouteCall,
};
use crate::{Error, Op, Result, Shape};

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
    let paged = Paged {
        op: Op::MlaDecode,
        table_shape: call.block_table.shape(),
        seqlens_shape: call.cache_seqlens.shape(),
        num_blocks: call.num_blocks,
        block_size: call.block_size,
        max_blocks: call.max_blocks,
    };
    paged.check(block_table, cache_seqlens)
}

/// [`check_mla_indices`]' rules for `dsa_indexer_topk`'s block table and lengths.
pub fn check_indexer_indices(
    call: &DsaIndexerTopkCall<'_>,
    block_table: &[i32],
    cache_seqlens: &[i32],
) -> Result<()> {
    let paged = Paged {
        op: Op::DsaIndexerTopk,
        table_shape: call.block_table.shape(),
        seqlens_shape: call.cache_seqlens.shape(),
        num_blocks: call.num_blocks,
        block_size: call.block_size,
        max_blocks: call.max_blocks,
    };
    paged.check(block_table, cache_seqlens)
}

/// The geometry of a paged cache and its index tensors.
struct Paged<'s> {
    op: Op,
    table_shape: &'s Shape,
    seqlens_shape: &'s Shape,
    num_blocks: usize,
    block_size: usize,
    max_blocks: usize,
}

impl Paged<'_> {
    fn check(&self, block_table: &[i32], cache_seqlens: &[i32]) -> Result<()> {
        let capacity =
            i64::try_from(self.max_blocks.saturating_mul(self.block_size)).unwrap_or(i64::MAX);
        if let Some(b) = cache_seqlens
            .iter()
            .position(|&len| !(0..=capacity).contains(&(len as i64)))
        {
            return Err(Error::index_out_of_range(
                self.op,
                "cache_seqlens",
                self.seqlens_shape,
                b,
                cache_seqlens[b] as i64,
                format!("[0, {capacity}] (max_blocks * block_size)"),
            ));
        }
        let num_blocks = self.num_blocks as i64;
        for (b, &len) in cache_seqlens.iter().enumerate() {
            let used = (len as usize).div_ceil(self.block_size);
            let row = &block_table[b * self.max_blocks..][..used];
            if let Some(j) = row
                .iter()
                .position(|&blk| !(0..num_blocks).contains(&(blk as i64)))
            {
                return Err(Error::index_out_of_range(
                    self.op,
                    "block_table",
                    self.table_shape,
                    b * self.max_blocks + j,
                    row[j] as i64,
                    format!("[0, {num_blocks}) (num_blocks)"),
                ));
            }
        }
        Ok(())
    }
}

/// Hash routing: every `input_ids` entry must lie in `[0, vocab)`, and every `tid2eid` row
/// a token reads must hold `top_k` distinct expert ids in `[0, E)` (rows no token reads are
/// not looked at). Reports the first bad element: an id out of range, or the second
/// occurrence of a repeated one. Does nothing without hash routing.
pub fn check_hash_routing(
    call: &MoeRouteCall<'_>,
    input_ids: &[i32],
    tid2eid: &[i32],
) -> Result<()> {
    let Some(hash) = call.hash else {
        return Ok(());
    };
    let vocab = hash.vocab as i64;
    if let Some(t) = input_ids
        .iter()
        .position(|&id| !(0..vocab).contains(&(id as i64)))
    {
        return Err(Error::index_out_of_range(
            Op::MoeRoute,
            "input_ids",
            hash.input_ids.shape(),
            t,
            input_ids[t] as i64,
            format!("[0, {vocab}) (rows of tid2eid)"),
        ));
    }
    let (k, experts) = (call.params.top_k, call.experts as i64);
    for &token in input_ids {
        let row_at = token as usize * k;
        let Some(row) = tid2eid.get(row_at..row_at + k) else {
            return Err(Error::Tensor(format!(
                "moe_route: tid2eid holds {} elements, fewer than its shape {} claims",
                tid2eid.len(),
                hash.tid2eid.shape()
            )));
        };
        for (j, &e) in row.iter().enumerate() {
            let repeated = row[..j].iter().position(|&prev| prev == e);
            if (0..experts).contains(&(e as i64)) && repeated.is_none() {
                continue;
            }
            let valid = match repeated {
                Some(first) => {
                    format!("[0, {experts}), distinct within the row (already at column {first})")
                }
                None => format!("[0, {experts}) (E)"),
            };
            return Err(Error::index_out_of_range(
                Op::MoeRoute,
                "tid2eid",
                hash.tid2eid.shape(),
                row_at + j,
                e as i64,
                valid,
            ));
        }
    }
    Ok(())
}

/// Sparse attention: every `topk_length` entry (if given) must lie in `[0, topk]`, and
/// every index entry that counts (`j < topk_length[b]`, or all without it) must be -1 or a
/// slot in `[0, num_blocks * block_size)`. Entries that do not count are never looked at.
pub fn check_sparse_indices(
    call: &MlaSparseDecodeCall<'_>,
    indices: &[i32],
    topk_length: Option<&[i32]>,
) -> Result<()> {
    let topk = call.topk;
    if let Some(lens) = topk_length {
        if let Some(b) = lens
            .iter()
            .position(|&n| !(0..=topk as i64).contains(&(n as i64)))
        {
            return Err(Error::index_out_of_range(
                Op::MlaSparseDecode,
                "topk_length",
                &Shape::from([lens.len()]),
                b,
                lens[b] as i64,
                format!("[0, {topk}] (topk)"),
            ));
        }
    }
    let slots = call.slots() as i64;
    for (r, row) in indices.chunks(topk.max(1)).enumerate() {
        let b = r / call.s_q.max(1);
        let len = topk_length.map_or(row.len(), |lens| {
            lens.get(b).map_or(0, |&n| n as usize).min(row.len())
        });
        if let Some(j) = row[..len]
            .iter()
            .position(|&s| s != -1 && !(0..slots).contains(&(s as i64)))
        {
            return Err(Error::index_out_of_range(
                Op::MlaSparseDecode,
                "indices",
                call.indices.shape(),
                r * topk + j,
                row[j] as i64,
                format!("-1 or [0, {slots}) (num_blocks * block_size)"),
            ));
        }
    }
    Ok(())
}

/// `mla_kv_quantize` takes finite values only: `kv` ([N, 576] as f32, row-major) must hold
/// no NaN or infinity. The error names the first bad row and element.
pub fn check_kv_finite(call: &MlaKvQuantizeCall<'_>, kv: &[f32]) -> Result<()> {
    match kv.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => {
            let index = call.kv.shape().unravel(at);
            Err(Error::Input {
                op: Op::MlaKvQuantize,
                arg: "kv",
                expected: "finite values".into(),
                got: format!("{} at row {} (element {index:?})", kv[at], index[0]),
            })
        }
    }
}

/// `mla_cache_write`'s slots: every entry of `slot_mapping` must be -1 (skip the row) or lie
/// in `[0, num_blocks * block_size)`.
pub fn check_cache_slots(call: &MlaCacheWriteCall<'_>, slot_mapping: &[i32]) -> Result<()> {
    let slots = i64::try_from(call.slots()).unwrap_or(i64::MAX);
    match (slot_mapping.iter()).position(|&s| s != -1 && !(0..slots).contains(&i64::from(s))) {
        None => Ok(()),
        Some(at) => Err(Error::index_out_of_range(
            Op::MlaCacheWrite,
            "slot_mapping",
            call.slot_mapping.shape(),
            at,
            i64::from(slot_mapping[at]),
            format!("-1 or [0, {slots}) (num_blocks * block_size)"),
        )),
    }
}

/// `mla_cache_write` with `kv_format` `fp8_ds_v32` quantizes finite values only: every row of
/// `kv` ([N, 576] as f32, row-major) whose slot is not -1 must hold no NaN or infinity (rows
/// with slot -1 are never read). The error names the first bad row and element, as
/// [`check_kv_finite`]'s does.
pub fn check_cache_rows_finite(
    call: &MlaCacheWriteCall<'_>,
    kv: &[f32],
    slot_mapping: &[i32],
) -> Result<()> {
    let width = call.d_qk.max(1);
    let bad = (kv.chunks(width).zip(slot_mapping).enumerate())
        .filter(|(_, (_, &slot))| slot != -1)
        .find_map(|(r, (row, _))| row.iter().position(|v| !v.is_finite()).map(|c| (r, c)));
    match bad {
        None => Ok(()),
        Some((r, c)) => Err(Error::Input {
            op: Op::MlaCacheWrite,
            arg: "kv",
            expected: "finite values (kv_format fp8_ds_v32)".into(),
            got: format!("{} at row {r} (element [{r}, {c}])", kv[r * width + c]),
        }),
    }
}
