//! Shape, dtype and parameter rules of `dsa_indexer_topk`.

use super::checks;
use super::paged_cache::{self, BlockTable};
use crate::calls::{DsaIndexerTopkCall, Validated};
use crate::{DType, DeviceTensor, IndexerParams, Op, Result};

const OP: Op = Op::DsaIndexerTopk;

/// The tensors of a `dsa_indexer_topk` call, by contract name.
pub(crate) struct IndexerArgs<'a> {
    pub q: &'a DeviceTensor,
    pub weights: &'a DeviceTensor,
    pub k_cache: &'a DeviceTensor,
    pub block_table: &'a DeviceTensor,
    pub cache_seqlens: &'a DeviceTensor,
}

/// Checks a `dsa_indexer_topk` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: IndexerArgs<'a>,
    params: &'a IndexerParams,
) -> Result<DsaIndexerTopkCall<'a>> {
    checks::same_backend(
        OP,
        backend,
        &[
            ("q", a.q),
            ("weights", a.weights),
            ("k_cache", a.k_cache),
            ("block_table", a.block_table),
            ("cache_seqlens", a.cache_seqlens),
        ],
    )?;

    checks::rank(OP, "q", a.q, 4, "[B, Sq, Hi, Di]")?;
    checks::rank(OP, "weights", a.weights, 3, "[B, Sq, Hi]")?;
    checks::rank(OP, "k_cache", a.k_cache, 3, "[num_blocks, block_size, Di]")?;
    let table = BlockTable {
        op: OP,
        block_table: a.block_table,
        cache_seqlens: a.cache_seqlens,
    };
    table.ranks()?;

    checks::dtype_in(OP, "q", a.q, &DType::FLOATS)?;
    let dtype = a.q.dtype();
    checks::dtype_in(OP, "weights", a.weights, &[DType::F32])?;
    checks::dtype_same(OP, "k_cache", a.k_cache, "q", dtype)?;
    table.dtypes()?;

    for (dim, name) in ["B", "Sq", "Hi", "Di"].into_iter().enumerate() {
        checks::dim_nonzero(OP, "q", a.q, dim, name)?;
    }
    let [batch, s_q, h_i, d_i] = [0, 1, 2, 3].map(|d| a.q.dims()[d]);
    checks::dim_eq(OP, "weights", a.weights, 0, "B", batch, "B of q")?;
    checks::dim_eq(OP, "weights", a.weights, 1, "Sq", s_q, "Sq of q")?;
    checks::dim_eq(OP, "weights", a.weights, 2, "Hi", h_i, "Hi of q")?;
    let [num_blocks, block_size] = paged_cache::blocks(OP, "k_cache", a.k_cache)?;
    checks::dim_eq(OP, "k_cache", a.k_cache, 2, "Di", d_i, "Di of q")?;
    let max_blocks = table.dims(batch)?;
    // Output slots are I32: every slot of the cache must fit.
    paged_cache::slots_fit_i32(OP, "k_cache", a.k_cache)?;

    checks::param(
        OP,
        "top_k",
        params.top_k >= 1,
        || ">= 1".into(),
        params.top_k,
    )?;

    Ok(DsaIndexerTopkCall {
        q: a.q,
        weights: a.weights,
        k_cache: a.k_cache,
        block_table: a.block_table,
        cache_seqlens: a.cache_seqlens,
        params,
        dtype,
        batch,
        s_q,
        h_i,
        d_i,
        num_blocks,
        block_size,
        max_blocks,
        validated: Validated(()),
    })
}
