//! The three v1 ops: validated calls marshalled into the header's args structs, outputs
//! allocated here (contents unspecified; the op writes all of them), errors mapped.

use crate::device::dtype_code;
use crate::error::{Context, IndexArg};
use crate::ffi::{self, SizedStruct};
use crate::PluginBackend;
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    DType, DeviceTensor, GroupSelect, MlaDecodeOutput, MoeRouteOutput, Op, Result, ScoreFunc,
};

/// `moe_route`.
pub(crate) fn moe_route(b: &PluginBackend, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    const CALL: &str = "moe_route";
    b.require(Op::MoeRoute, call.logits.dtype())?;
    let p = call.params;
    let logits = b.input(call.logits, CALL, "logits")?;
    let bias = match call.bias {
        Some(t) => b.input(t, CALL, "bias")?.input(),
        None => std::ptr::null(),
    };
    let dims = [call.tokens, p.top_k];
    let (topk_ids, ids_out) = b.output(&dims, DType::I32)?;
    let (topk_weights, weights_out) = b.output(&dims, DType::F32)?;

    let mut args = ffi::MoemlaMoeRouteArgs::zeroed();
    args.device = b.device.handle();
    args.logits = logits.input();
    args.logits_dtype = dtype_code(call.logits.dtype());
    args.bias = bias;
    args.tokens = call.tokens;
    args.experts = call.experts;
    args.score_func = match p.score_func {
        ScoreFunc::Sigmoid => ffi::SCORE_FUNC_SIGMOID,
        ScoreFunc::Softmax => ffi::SCORE_FUNC_SOFTMAX,
        ScoreFunc::Sqrtsoftplus => {
            return Err(moemla_core::Error::unsupported_format(
                b.device.name(),
                Op::MoeRoute,
                moemla_core::Format::Sqrtsoftplus,
            ))
        }
    };
    args.group_select = match p.group_select {
        GroupSelect::Max => ffi::GROUP_SELECT_MAX,
        GroupSelect::Top2Sum => ffi::GROUP_SELECT_TOP2_SUM,
    };
    args.top_k = p.top_k;
    args.n_group = p.n_group;
    args.topk_group = p.topk_group;
    args.renormalize = i32::from(p.renormalize);
    // Validation checked it is finite as an f32, the value kernels compute with.
    args.routed_scaling_factor = p.routed_scaling_factor as f32;
    args.topk_ids = ids_out;
    args.topk_weights = weights_out;
    let ctx = Context::op(b.device.name(), Op::MoeRoute, &[]);
    // SAFETY: every handle is this device's: inputs checked by `input` (owner, device,
    // byte size), outputs just allocated with the contract's sizes; all stay alive
    // (borrowed or owned here) for the call.
    unsafe {
        b.device
            .call(b.device.plugin.fns.moe_route, &mut args, &ctx)?
    };
    Ok(MoeRouteOutput {
        topk_ids,
        topk_weights,
    })
}

/// `moe_experts`.
pub(crate) fn moe_experts(b: &PluginBackend, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
    const CALL: &str = "moe_experts";
    b.require(Op::MoeExperts, call.dtype)?;
    let x = b.input(call.x, CALL, "x")?;
    let w13 = b.input(call.w13, CALL, "w13")?;
    let w2 = b.input(call.w2, CALL, "w2")?;
    let ids = b.input(call.topk_ids, CALL, "topk_ids")?;
    let weights = b.input(call.topk_weights, CALL, "topk_weights")?;
    let (y, y_out) = b.output(&[call.tokens, call.hidden], call.dtype)?;

    let mut args = ffi::MoemlaMoeExpertsArgs::zeroed();
    args.device = b.device.handle();
    args.dtype = dtype_code(call.dtype);
    args.x = x.input();
    args.w13 = w13.input();
    args.w2 = w2.input();
    args.topk_ids = ids.input();
    args.topk_weights = weights.input();
    args.tokens = call.tokens;
    args.hidden = call.hidden;
    args.inter = call.inter;
    args.experts = call.experts;
    args.top_k = call.top_k;
    args.y = y_out;
    let indices = [IndexArg {
        name: "topk_ids",
        shape: call.topk_ids.shape(),
        valid: format!("[-1, {})", call.experts),
    }];
    let ctx = Context::op(b.device.name(), Op::MoeExperts, &indices);
    // SAFETY: as in `moe_route`: checked inputs and fresh outputs of this device.
    unsafe {
        b.device
            .call(b.device.plugin.fns.moe_experts, &mut args, &ctx)?
    };
    Ok(y)
}

/// `mla_decode`.
pub(crate) fn mla_decode(b: &PluginBackend, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    const CALL: &str = "mla_decode";
    b.require(Op::MlaDecode, call.dtype)?;
    let q = b.input(call.q, CALL, "q")?;
    let kv_cache = b.input(call.kv_cache, CALL, "kv_cache")?;
    let block_table = b.input(call.block_table, CALL, "block_table")?;
    let cache_seqlens = b.input(call.cache_seqlens, CALL, "cache_seqlens")?;
    let (o, o_out) = b.output(&[call.batch, call.s_q, call.h_q, call.d_v], call.dtype)?;
    let (lse, lse_out) = b.output(&[call.batch, call.h_q, call.s_q], DType::F32)?;

    let mut args = ffi::MoemlaMlaDecodeArgs::zeroed();
    args.device = b.device.handle();
    args.dtype = dtype_code(call.dtype);
    args.q = q.input();
    args.kv_cache = kv_cache.input();
    args.block_table = block_table.input();
    args.cache_seqlens = cache_seqlens.input();
    args.batch = call.batch;
    args.s_q = call.s_q;
    args.h_q = call.h_q;
    args.h_kv = call.h_kv;
    args.d_qk = call.d_qk;
    args.d_v = call.d_v;
    args.num_blocks = call.num_blocks;
    args.block_size = call.block_size;
    args.max_blocks = call.max_blocks;
    // Validation checked it is finite and > 0 as an f32, the value kernels compute with.
    args.softmax_scale = call.params.softmax_scale as f32;
    args.causal = i32::from(call.params.causal);
    args.o = o_out;
    args.lse = lse_out;
    let capacity = call.max_blocks.saturating_mul(call.block_size);
    let indices = [
        IndexArg {
            name: "cache_seqlens",
            shape: call.cache_seqlens.shape(),
            valid: format!("[0, {capacity}] (max_blocks * block_size)"),
        },
        IndexArg {
            name: "block_table",
            shape: call.block_table.shape(),
            valid: format!("[0, {}) (num_blocks)", call.num_blocks),
        },
    ];
    let ctx = Context::op(b.device.name(), Op::MlaDecode, &indices);
    // SAFETY: as in `moe_route`: checked inputs and fresh outputs of this device.
    unsafe {
        b.device
            .call(b.device.plugin.fns.mla_decode, &mut args, &ctx)?
    };
    Ok(MlaDecodeOutput { o, lse })
}
