//! Shape, dtype and parameter rules of `mla_sparse_decode`.

use super::{checks, paged_cache};
use crate::calls::{MlaSparseDecodeCall, Validated};
use crate::ops::SparseDecodeInputs;
use crate::{DType, KvFormat, Op, Result, SparseDecodeParams};

const OP: Op = Op::MlaSparseDecode;

/// Checks an `mla_sparse_decode` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: SparseDecodeInputs<'a>,
    params: &'a SparseDecodeParams,
) -> Result<MlaSparseDecodeCall<'a>> {
    let mut tensors = vec![("q", a.q), ("kv_cache", a.kv_cache), ("indices", a.indices)];
    tensors.extend(a.topk_length.map(|t| ("topk_length", t)));
    tensors.extend(a.attn_sink.map(|t| ("attn_sink", t)));
    checks::same_backend(OP, backend, &tensors)?;

    checks::rank(OP, "q", a.q, 4, "[B, Sq, Hq, Dqk]")?;
    checks::rank(
        OP,
        "kv_cache",
        a.kv_cache,
        4,
        "[num_blocks, block_size, 1, Dqk]",
    )?;
    checks::rank(OP, "indices", a.indices, 3, "[B, Sq, topk]")?;

    let fp8 = params.kv_format == KvFormat::Fp8DsV32;
    let dtype = checks::cache_dtypes(OP, a.q, a.kv_cache, params.kv_format)?;
    checks::dtype_in(OP, "indices", a.indices, &[DType::I32])?;

    for (dim, name) in ["B", "Sq", "Hq", "Dqk"].into_iter().enumerate() {
        checks::dim_nonzero(OP, "q", a.q, dim, name)?;
    }
    let [batch, s_q, h_q, d_qk] = [0, 1, 2, 3].map(|d| a.q.dims()[d]);
    let [num_blocks, block_size] = paged_cache::blocks(OP, "kv_cache", a.kv_cache)?;
    if fp8 {
        checks::fp8_cache_dims(OP, a.q, a.kv_cache, params.head_dim_v)?;
    } else {
        paged_cache::one_kv_head(OP, a.kv_cache)?;
        checks::dim_eq(OP, "kv_cache", a.kv_cache, 3, "Dqk", d_qk, "Dqk of q")?;
    }
    checks::dim_eq(OP, "indices", a.indices, 0, "B", batch, "B of q")?;
    checks::dim_eq(OP, "indices", a.indices, 1, "Sq", s_q, "Sq of q")?;
    checks::dim_nonzero(OP, "indices", a.indices, 2, "topk")?;
    let topk = a.indices.dims()[2];

    if let Some(t) = a.topk_length {
        checks::rank(OP, "topk_length", t, 1, "[B]")?;
        checks::dtype_in(OP, "topk_length", t, &[DType::I32])?;
        checks::dim_eq(OP, "topk_length", t, 0, "B", batch, "B of q")?;
    }
    if let Some(t) = a.attn_sink {
        checks::rank(OP, "attn_sink", t, 1, "[Hq]")?;
        checks::dtype_in(OP, "attn_sink", t, &[DType::F32])?;
        checks::dim_eq(OP, "attn_sink", t, 0, "Hq", h_q, "Hq of q")?;
    }

    let p = params;
    checks::attention_params(OP, p.head_dim_v, p.softmax_scale, d_qk)?;
    // Flat slots are I32: num_blocks * block_size must fit.
    paged_cache::slots_fit_i32(OP, "kv_cache", a.kv_cache)?;

    Ok(MlaSparseDecodeCall {
        q: a.q,
        kv_cache: a.kv_cache,
        indices: a.indices,
        topk_length: a.topk_length,
        attn_sink: a.attn_sink,
        params,
        dtype,
        batch,
        s_q,
        h_q,
        d_qk,
        d_v: p.head_dim_v,
        num_blocks,
        block_size,
        topk,
        validated: Validated(()),
    })
}
