//! The ops' `_into` forms: the same validation and dispatch, with outputs written into
//! tensors the caller provides (and reuses across calls) instead of new ones.

use super::{
    cache_formats, experts_formats, require, ExpertsInputs, RouteInputs, SparseDecodeInputs,
};
use crate::validate::dsa_indexer_topk::IndexerArgs;
use crate::validate::mla_decode::MlaArgs;
use crate::validate::{
    dsa_indexer_topk as indexer_rules, mla_decode as mla_rules, mla_kv_quantize as quant_rules,
    mla_sparse_decode as sparse_rules, moe_experts as experts_rules, moe_route as route_rules,
};
use crate::{
    Backend, DType, DeviceTensor, Error, ExpertsParams, Format, IndexerParams, KvQuantizeParams,
    MlaDecodeParams, Op, Result, RouteParams, ScoreFunc, SparseDecodeParams,
};

/// [`super::moe_route_with`] writing `topk_ids` [T, top_k] I32 and `topk_weights`
/// [T, top_k] F32 into the caller's tensors (on `backend`; neither may share a buffer with
/// an input or with the other). Their previous contents are overwritten.
pub fn moe_route_into(
    backend: &dyn Backend,
    inputs: RouteInputs<'_>,
    params: &RouteParams,
    topk_ids: &DeviceTensor,
    topk_weights: &DeviceTensor,
) -> Result<()> {
    let call = route_rules::validate(backend.name(), inputs, params)?;
    let mut formats = Vec::new();
    if params.score_func == ScoreFunc::Sqrtsoftplus {
        formats.push(Format::Sqrtsoftplus);
    }
    if call.hash.is_some() {
        formats.push(Format::HashRouting);
    }
    let dims = [call.tokens, params.top_k];
    let op = Op::MoeRoute;
    output(
        backend,
        op,
        "topk_ids",
        topk_ids,
        &dims,
        "[T, top_k]",
        DType::I32,
    )?;
    output(
        backend,
        op,
        "topk_weights",
        topk_weights,
        &dims,
        "[T, top_k]",
        DType::F32,
    )?;
    let mut read = vec![("logits", inputs.logits)];
    read.extend(inputs.bias.map(|t| ("bias", t)));
    read.extend(inputs.input_ids.map(|t| ("input_ids", t)));
    read.extend(inputs.tid2eid.map(|t| ("tid2eid", t)));
    distinct(
        op,
        &read,
        &[("topk_ids", topk_ids), ("topk_weights", topk_weights)],
    )?;
    require(backend, op, call.logits.dtype(), &formats)?;
    backend.moe_route_into(&call, topk_ids, topk_weights)
}

/// [`super::moe_experts_with`] writing `y` [T, H] (run dtype) into the caller's tensor (on
/// `backend`, sharing no buffer with an input). Its previous contents are overwritten.
pub fn moe_experts_into(
    backend: &dyn Backend,
    inputs: ExpertsInputs<'_>,
    params: &ExpertsParams,
    y: &DeviceTensor,
) -> Result<()> {
    let call = experts_rules::validate(backend.name(), inputs, params)?;
    let op = Op::MoeExperts;
    output(
        backend,
        op,
        "y",
        y,
        &[call.tokens, call.hidden],
        "[T, H]",
        call.dtype,
    )?;
    let mut read = vec![
        ("x", inputs.x),
        ("w13", inputs.w13),
        ("w2", inputs.w2),
        ("topk_ids", inputs.topk_ids),
        ("topk_weights", inputs.topk_weights),
    ];
    read.extend(inputs.w13_scale.map(|t| ("w13_scale", t)));
    read.extend(inputs.w2_scale.map(|t| ("w2_scale", t)));
    read.extend(inputs.shared_w13.map(|t| ("shared_w13", t)));
    read.extend(inputs.shared_w2.map(|t| ("shared_w2", t)));
    distinct(op, &read, &[("y", y)])?;
    require(backend, op, call.dtype, &experts_formats(&call))?;
    backend.moe_experts_into(&call, y)
}

/// [`super::mla_decode`] writing `o` [B, Sq, Hq, Dv] (run dtype) and `lse` [B, Hq, Sq] F32
/// into the caller's tensors (on `backend`; neither may share a buffer with an input or
/// with the other). Their previous contents are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn mla_decode_into(
    backend: &dyn Backend,
    q: &DeviceTensor,
    kv_cache: &DeviceTensor,
    block_table: &DeviceTensor,
    cache_seqlens: &DeviceTensor,
    params: &MlaDecodeParams,
    o: &DeviceTensor,
    lse: &DeviceTensor,
) -> Result<()> {
    let args = MlaArgs {
        q,
        kv_cache,
        block_table,
        cache_seqlens,
    };
    let call = mla_rules::validate(backend.name(), args, params)?;
    let op = Op::MlaDecode;
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    attention_outputs(backend, op, dims, call.dtype, (o, lse))?;
    let read = [
        ("q", q),
        ("kv_cache", kv_cache),
        ("block_table", block_table),
        ("cache_seqlens", cache_seqlens),
    ];
    distinct(op, &read, &[("o", o), ("lse", lse)])?;
    require(backend, op, call.dtype, cache_formats(params.kv_format))?;
    backend.mla_decode_into(&call, o, lse)
}

/// [`super::mla_sparse_decode`] writing `o` [B, Sq, Hq, Dv] (run dtype) and `lse`
/// [B, Hq, Sq] F32 into the caller's tensors (on `backend`; neither may share a buffer with
/// an input or with the other). Their previous contents are overwritten.
pub fn mla_sparse_decode_into(
    backend: &dyn Backend,
    inputs: SparseDecodeInputs<'_>,
    params: &SparseDecodeParams,
    o: &DeviceTensor,
    lse: &DeviceTensor,
) -> Result<()> {
    let call = sparse_rules::validate(backend.name(), inputs, params)?;
    let op = Op::MlaSparseDecode;
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    attention_outputs(backend, op, dims, call.dtype, (o, lse))?;
    let mut read = vec![
        ("q", inputs.q),
        ("kv_cache", inputs.kv_cache),
        ("indices", inputs.indices),
    ];
    read.extend(inputs.topk_length.map(|t| ("topk_length", t)));
    read.extend(inputs.attn_sink.map(|t| ("attn_sink", t)));
    distinct(op, &read, &[("o", o), ("lse", lse)])?;
    require(backend, op, call.dtype, cache_formats(params.kv_format))?;
    backend.mla_sparse_decode_into(&call, o, lse)
}

/// [`super::mla_kv_quantize`] writing `kv_fp8` [N, 656] U8 into the caller's tensor (on
/// `backend`, sharing no buffer with `kv`). Its previous contents are overwritten.
pub fn mla_kv_quantize_into(
    backend: &dyn Backend,
    kv: &DeviceTensor,
    params: &KvQuantizeParams,
    kv_fp8: &DeviceTensor,
) -> Result<()> {
    let call = quant_rules::validate(backend.name(), kv, params)?;
    let op = Op::MlaKvQuantize;
    let dims = [call.rows, crate::fp8::DS_V32_ROW_BYTES];
    output(backend, op, "kv_fp8", kv_fp8, &dims, "[N, 656]", DType::U8)?;
    distinct(op, &[("kv", kv)], &[("kv_fp8", kv_fp8)])?;
    require(backend, op, call.dtype, &[Format::Fp8DsV32])?;
    backend.mla_kv_quantize_into(&call, kv_fp8)
}

/// [`super::dsa_indexer_topk`] writing `topk_indices` [B, Sq, top_k] I32 and `topk_scores`
/// [B, Sq, top_k] F32 into the caller's tensors (on `backend`; neither may share a buffer
/// with an input or with the other). Their previous contents are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn dsa_indexer_topk_into(
    backend: &dyn Backend,
    q: &DeviceTensor,
    weights: &DeviceTensor,
    k_cache: &DeviceTensor,
    block_table: &DeviceTensor,
    cache_seqlens: &DeviceTensor,
    params: &IndexerParams,
    topk_indices: &DeviceTensor,
    topk_scores: &DeviceTensor,
) -> Result<()> {
    let args = IndexerArgs {
        q,
        weights,
        k_cache,
        block_table,
        cache_seqlens,
    };
    let call = indexer_rules::validate(backend.name(), args, params)?;
    let op = Op::DsaIndexerTopk;
    let dims = [call.batch, call.s_q, params.top_k];
    let layout = "[B, Sq, top_k]";
    output(
        backend,
        op,
        "topk_indices",
        topk_indices,
        &dims,
        layout,
        DType::I32,
    )?;
    output(
        backend,
        op,
        "topk_scores",
        topk_scores,
        &dims,
        layout,
        DType::F32,
    )?;
    let read = [
        ("q", q),
        ("weights", weights),
        ("k_cache", k_cache),
        ("block_table", block_table),
        ("cache_seqlens", cache_seqlens),
    ];
    let written = [("topk_indices", topk_indices), ("topk_scores", topk_scores)];
    distinct(op, &read, &written)?;
    backend.dsa_indexer_topk_into(&call, topk_indices, topk_scores)
}

/// The outputs of an attention op (`dims` = [B, Sq, Hq, Dv]): `o` [B, Sq, Hq, Dv] in the
/// run dtype and `lse` [B, Hq, Sq] F32, checked as [`output`] does.
fn attention_outputs(
    backend: &dyn Backend,
    op: Op,
    [b, s_q, h_q, d_v]: [usize; 4],
    dtype: DType,
    (o, lse): (&DeviceTensor, &DeviceTensor),
) -> Result<()> {
    output(
        backend,
        op,
        "o",
        o,
        &[b, s_q, h_q, d_v],
        "[B, Sq, Hq, Dv]",
        dtype,
    )?;
    output(
        backend,
        op,
        "lse",
        lse,
        &[b, h_q, s_q],
        "[B, Hq, Sq]",
        DType::F32,
    )
}

/// A caller-provided output must be on `backend`, with the contract's shape `dims`
/// (`layout`) and `dtype`: the typed error naming `arg` otherwise.
fn output(
    backend: &dyn Backend,
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    dims: &[usize],
    layout: &'static str,
    dtype: DType,
) -> Result<()> {
    if t.backend() != backend.name() {
        return Err(Error::WrongBackend {
            op: op.name(),
            arg,
            expected: backend.name().to_string(),
            got: t.backend().to_string(),
        });
    }
    if t.dims().len() != dims.len() {
        return Err(Error::Rank {
            op,
            arg,
            layout,
            expected: dims.len(),
            got: t.dims().len(),
            shape: t.shape().clone(),
        });
    }
    let names = layout.trim_matches(|c| c == '[' || c == ']').split(", ");
    for ((dim, (&got, &want)), name) in t.dims().iter().zip(dims).enumerate().zip(names) {
        if got != want {
            return Err(Error::Dim {
                op,
                arg,
                dim,
                dim_name: dim_name(name),
                expected: format!("{want} (the contract's output)"),
                got,
                shape: t.shape().clone(),
            });
        }
    }
    if t.dtype() != dtype {
        return Err(Error::DType {
            op,
            arg,
            expected: dtype.name().to_string(),
            got: t.dtype(),
        });
    }
    Ok(())
}

/// The `&'static` name of a dimension of an output layout.
fn dim_name(name: &str) -> &'static str {
    ["T", "top_k", "H", "B", "Sq", "Hq", "Dv", "N", "656"]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("?")
}

/// No output may share a buffer with an input or with another output: an
/// [`Error::Input`] naming the output and what it aliases.
pub(super) fn distinct(
    op: Op,
    inputs: &[(&'static str, &DeviceTensor)],
    outputs: &[(&'static str, &DeviceTensor)],
) -> Result<()> {
    for (i, (arg, t)) in outputs.iter().enumerate() {
        let earlier = outputs[..i].iter();
        if let Some((other, _)) = inputs.iter().chain(earlier).find(|(_, u)| t.same_buffer(u)) {
            return Err(Error::Input {
                op,
                arg,
                expected: "a buffer of its own (outputs alias no input and no other output)"
                    .to_string(),
                got: format!("the buffer of `{other}`"),
            });
        }
    }
    Ok(())
}
