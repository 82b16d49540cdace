//! Shape, dtype and parameter rules of `mla_decode`.

use super::checks;
use super::paged_cache::{self, BlockTable};
use crate::calls::{MlaDecodeCall, Validated};
use crate::{DeviceTensor, KvFormat, MlaDecodeParams, Op, Result};

const OP: Op = Op::MlaDecode;

/// The tensors of an `mla_decode` call, by contract name.
pub(crate) struct MlaArgs<'a> {
    pub q: &'a DeviceTensor,
    pub kv_cache: &'a DeviceTensor,
    pub block_table: &'a DeviceTensor,
    pub cache_seqlens: &'a DeviceTensor,
}

/// Checks an `mla_decode` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: MlaArgs<'a>,
    params: &'a MlaDecodeParams,
) -> Result<MlaDecodeCall<'a>> {
    checks::same_backend(
        OP,
        backend,
        &[
            ("q", a.q),
            ("kv_cache", a.kv_cache),
            ("block_table", a.block_table),
            ("cache_seqlens", a.cache_seqlens),
        ],
    )?;

    checks::rank(OP, "q", a.q, 4, "[B, Sq, Hq, Dqk]")?;
    checks::rank(
        OP,
        "kv_cache",
        a.kv_cache,
        4,
        "[num_blocks, block_size, Hkv, Dqk]",
    )?;
    let table = BlockTable {
        op: OP,
        block_table: a.block_table,
        cache_seqlens: a.cache_seqlens,
    };
    table.ranks()?;

    let fp8 = params.kv_format == KvFormat::Fp8DsV32;
    let dtype = checks::cache_dtypes(OP, a.q, a.kv_cache, params.kv_format)?;
    table.dtypes()?;

    for (dim, name) in ["B", "Sq", "Hq", "Dqk"].into_iter().enumerate() {
        checks::dim_nonzero(OP, "q", a.q, dim, name)?;
    }
    let [batch, s_q, h_q, d_qk] = [0, 1, 2, 3].map(|d| a.q.dims()[d]);
    let [num_blocks, block_size] = paged_cache::blocks(OP, "kv_cache", a.kv_cache)?;
    checks::dim_nonzero(OP, "kv_cache", a.kv_cache, 2, "Hkv")?;
    let h_kv = a.kv_cache.dims()[2];
    if fp8 {
        checks::fp8_cache_dims(OP, a.q, a.kv_cache, params.head_dim_v)?;
    } else {
        checks::dim_eq(OP, "kv_cache", a.kv_cache, 3, "Dqk", d_qk, "Dqk of q")?;
    }
    if !h_q.is_multiple_of(h_kv) {
        return Err(checks::dim_error(
            OP,
            "kv_cache",
            a.kv_cache,
            2,
            "Hkv",
            format!("a divisor of Hq ({h_q})"),
        ));
    }
    let max_blocks = table.dims(batch)?;

    let p = params;
    checks::attention_params(OP, p.head_dim_v, p.softmax_scale, d_qk)?;

    Ok(MlaDecodeCall {
        q: a.q,
        kv_cache: a.kv_cache,
        block_table: a.block_table,
        cache_seqlens: a.cache_seqlens,
        params,
        dtype,
        batch,
        s_q,
        h_q,
        h_kv,
        d_qk,
        d_v: p.head_dim_v,
        num_blocks,
        block_size,
        max_blocks,
        validated: Validated(()),
    })
}
