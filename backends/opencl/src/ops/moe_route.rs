//! `moe_route`: one work-group per token (kernels/opencl/moe_route.cl).

use crate::device::{Arg, ClDevice, Module};
use crate::ops::{byte_len, int, need_local, pow2_at_most};
use crate::ClBuffer;
use moemla_core::calls::MoeRouteCall;
use moemla_core::{DType, Error, Format, GroupSelect, Op, Result, ScoreFunc};

/// Runs the routing; returns `topk_ids` [T, k] I32 and `topk_weights` [T, k] F32 buffers.
pub fn run(dev: &ClDevice, backend: &str, call: &MoeRouteCall<'_>) -> Result<(ClBuffer, ClBuffer)> {
    let p = call.params;
    let (t, e, k) = (call.tokens, call.experts, p.top_k);
    let logits = call
        .logits
        .buffer::<ClBuffer>(backend, "moe_route", "logits")?;
    let bias = match call.bias {
        Some(b) => Some(b.buffer::<ClBuffer>(backend, "moe_route", "bias")?),
        None => None,
    };
    int(Op::MoeRoute, "T", t)?;
    let score_func = match p.score_func {
        ScoreFunc::Sigmoid => 0,
        ScoreFunc::Softmax => 1,
        ScoreFunc::Sqrtsoftplus => {
            return Err(Error::unsupported_format(
                crate::NAME,
                Op::MoeRoute,
                Format::Sqrtsoftplus,
            ))
        }
    };
    // One work-group size for every E: PoCL compiles a kernel per work-group size.
    let ls = pow2_at_most(64, dev.facts.max_work_group);
    // Local memory: 12 bytes per expert, 8 per group, 8 per work-item.
    let local = e
        .checked_mul(12)
        .and_then(|b| b.checked_add(p.n_group.checked_mul(8)?))
        .and_then(|b| b.checked_add(ls * 8))
        .unwrap_or(usize::MAX);
    need_local(
        dev,
        Op::MoeRoute,
        &format!("E = {e}, n_group = {}", p.n_group),
        local,
    )?;
    let ids = dev.alloc_zeroed("moe_route topk_ids", byte_len(&[t, k], DType::I32)?)?;
    let weights = dev.alloc_zeroed("moe_route topk_weights", byte_len(&[t, k], DType::F32)?)?;
    let program = dev.program(Module::MoeRoute, call.logits.dtype())?;
    let args = [
        Arg::Buf(logits),
        Arg::Buf(bias.unwrap_or(logits)), // never read when has_bias = 0
        Arg::I32(bias.is_some() as i32),
        Arg::Buf(&ids),
        Arg::Buf(&weights),
        Arg::I32(int(Op::MoeRoute, "E", e)?),
        Arg::I32(score_func),
        Arg::I32(int(Op::MoeRoute, "n_group", p.n_group)?),
        Arg::I32(int(Op::MoeRoute, "topk_group", p.topk_group)?),
        Arg::I32(match p.group_select {
            GroupSelect::Max => 0,
            GroupSelect::Top2Sum => 1,
        }),
        Arg::I32(int(Op::MoeRoute, "top_k", k)?),
        Arg::I32(p.renormalize as i32),
        Arg::F32(p.routed_scaling_factor as f32),
        Arg::Local(e * 4),         // s
        Arg::Local(e * 4),         // sel
        Arg::Local(e * 4),         // taken
        Arg::Local(p.n_group * 4), // group scores
        Arg::Local(p.n_group * 4), // kept groups
        Arg::Local(ls * 4),        // reduction values
        Arg::Local(ls * 4),        // reduction ids
    ];
    dev.launch(&program, "moe_route", &args, &[t * ls], &[ls])?;
    Ok((ids, weights))
}
