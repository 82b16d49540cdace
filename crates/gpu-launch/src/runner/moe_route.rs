//! `moe_route`: one launch of `moemla_moe_route_<DT>` (kernels/README.md, moe_route.cu);
//! with hash routing a second, `moemla_moe_route_hash_resolve`, and `input_ids` / `tid2eid`
//! checked on the device into error flags.

use super::{flag_check, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::MoeRouteCall;
use moemla_core::{DeviceTensor, GroupSelect, Op, Result, ScoreFunc};
use moemla_kernel_plan::route;

const CALL: &str = "moe_route";

/// Enqueues routing `call.tokens` tokens into `topk_ids` [T, top_k] I32 and
/// `topk_weights` [T, top_k] F32 (the caller's or fresh tensors). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MoeRouteCall<'_>,
    topk_ids: &DeviceTensor,
    topk_weights: &DeviceTensor,
) -> Result<()> {
    let op = Op::MoeRoute;
    let p = call.params;
    let logits = g.buffer(call.logits, CALL, "logits")?;
    let bias = call.bias.map(|t| g.buffer(t, CALL, "bias")).transpose()?;
    let ids = g.out_buffer(topk_ids, CALL, "topk_ids")?;
    let weights = g.out_buffer(topk_weights, CALL, "topk_weights")?;
    let limits = g.dev.limits(op)?;
    let launch = route::plan(
        call.tokens,
        call.experts,
        p.top_k,
        p.n_group,
        call.logits.dtype(),
        &limits,
    )
    .map_err(|e| g.plan_error(e))?;
    let score_func = match p.score_func {
        ScoreFunc::Sigmoid => 0,
        ScoreFunc::Softmax => 1,
        ScoreFunc::Sqrtsoftplus => 2,
    };
    let hash = call
        .hash
        .map(|h| {
            Ok::<_, moemla_core::Error>((
                g.buffer(h.input_ids, CALL, "input_ids")?,
                g.buffer(h.tid2eid, CALL, "tid2eid")?,
                g.int(op, "vocab", h.vocab)?,
                h,
            ))
        })
        .transpose()?;
    let mut stream = g.lock();
    // Hash routing's flags: input_ids; tid2eid in token order (the kernel's raw word), at
    // its table position (resolved), the column a repeat repeats (see moe_route.cu).
    let flags = match &hash {
        Some((_, _, _, h)) => {
            let experts = call.experts;
            let table = |kind| FlagCheck {
                arg: "tid2eid",
                shape: h.tid2eid.shape().clone(),
                valid: format!("[0, {experts}) (E)"),
                kind,
            };
            stream.flags.reserve(
                &g.dev,
                op,
                vec![
                    flag_check(
                        "input_ids",
                        h.input_ids,
                        format!("[0, {}) (rows of tid2eid)", h.vocab),
                    ),
                    table(FlagKind::Scratch),
                    table(FlagKind::DistinctRow {
                        distinct: format!("[0, {experts})"),
                    }),
                    table(FlagKind::Scratch),
                ],
            )?
        }
        None => Vec::new(),
    };
    // Any valid pointer where an input is absent: the kernel does not read it.
    let unused = logits.address();
    let (input_ids, tid2eid, vocab) = match &hash {
        Some((i, t, v, _)) => (i.address(), t.address(), *v),
        None => (unused, unused, Arg::I32(0)),
    };
    let args = [
        Arg::Ptr(logits.address()),
        Arg::Ptr(bias.map_or(unused, |b| b.address())),
        Arg::I32(i32::from(bias.is_some())),
        Arg::Ptr(input_ids),
        Arg::Ptr(tid2eid),
        vocab,
        Arg::Ptr(ids.address()),
        Arg::Ptr(weights.address()),
        g.int(op, "E", call.experts)?,
        g.int(op, "top_k", p.top_k)?,
        g.int(op, "n_group", p.n_group)?,
        g.int(op, "topk_group", p.topk_group)?,
        Arg::I32(score_func),
        Arg::I32(match p.group_select {
            GroupSelect::Max => 0,
            GroupSelect::Top2Sum => 1,
        }),
        Arg::I32(i32::from(p.renormalize)),
        Arg::F32(p.routed_scaling_factor as f32),
        Arg::Ptr(flags.first().copied().unwrap_or(unused)),
    ];
    g.launch(Module::MoeRoute, &launch, &args)?;
    if let Some((input_ids, tid2eid, _, _)) = &hash {
        g.launch(
            Module::MoeRoute,
            &route::hash_resolve(),
            &[
                Arg::Ptr(input_ids.address()),
                Arg::Ptr(tid2eid.address()),
                g.int(op, "top_k", p.top_k)?,
                Arg::Ptr(flags[0]),
            ],
        )?;
    }
    drop(stream);
    Ok(())
}
