//! `moe_experts`: align, gate-up + SwiGLU, down, combine (kernels/README.md,
//! moe_experts.cu), with `topk_ids` checked on the device into one error flag.

use super::{at, flag_check, int, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{DeviceTensor, Op, Result};
use moemla_kernel_plan::experts;

const CALL: &str = "moe_experts";

/// Enqueues the fused experts; returns `y` [T, H] in the run dtype.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MoeExpertsCall<'_>,
) -> Result<DeviceTensor> {
    let op = Op::MoeExperts;
    let x = g.buffer(call.x, CALL, "x")?;
    let w13 = g.buffer(call.w13, CALL, "w13")?;
    let w2 = g.buffer(call.w2, CALL, "w2")?;
    let ids = g.buffer(call.topk_ids, CALL, "topk_ids")?;
    let weights = g.buffer(call.topk_weights, CALL, "topk_weights")?;
    g.dev.enter()?;
    let limits = g.dev.limits(op)?;
    let plan = experts::plan(
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
        call.dtype,
        &limits,
    )
    .map_err(|e| g.plan_error(e))?;
    let (y, shape) = g.output(&[call.tokens, call.hidden], call.dtype, plan.y_bytes)?;
    let (h, i, k) = (
        int::<D>(op, "H", call.hidden)?,
        int::<D>(op, "I", call.inter)?,
        int::<D>(op, "k", call.top_k)?,
    );

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flag = stream.flags.reserve(
        &g.dev,
        op,
        vec![flag_check(
            "topk_ids",
            call.topk_ids,
            format!("[-1, {})", call.experts),
        )],
    )?[0];
    let w = plan.workspace;
    let [align, gate_up, down, combine] = &plan.launches;
    let m = Module::MoeExperts;
    g.launch(
        m,
        align,
        &[
            Arg::Ptr(ids.address()),
            Arg::Ptr(weights.address()),
            int::<D>(op, "T * k", plan.slots)?,
            int::<D>(op, "E", call.experts)?,
            int::<D>(op, "row tiles", plan.max_tiles)?,
            at(ws, w.sorted_rows),
            at(ws, w.slot_pos),
            at(ws, w.tile_expert),
            at(ws, w.meta),
            Arg::Ptr(flag),
        ],
    )?;
    g.launch(
        m,
        gate_up,
        &[
            Arg::Ptr(x.address()),
            Arg::Ptr(w13.address()),
            at(ws, w.sorted_rows),
            at(ws, w.tile_expert),
            at(ws, w.meta),
            at(ws, w.act),
            h,
            i,
            k,
        ],
    )?;
    g.launch(
        m,
        down,
        &[
            at(ws, w.act),
            Arg::Ptr(w2.address()),
            at(ws, w.sorted_rows),
            at(ws, w.tile_expert),
            at(ws, w.meta),
            at(ws, w.yslot),
            h,
            i,
        ],
    )?;
    g.launch(
        m,
        combine,
        &[
            at(ws, w.yslot),
            at(ws, w.slot_pos),
            Arg::Ptr(weights.address()),
            Arg::Ptr(y.address()),
            h,
            k,
        ],
    )?;
    drop(stream);
    Ok(g.tensor(y, shape, call.dtype))
}
