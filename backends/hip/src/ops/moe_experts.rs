//! `moe_experts`: align/permute, gate-up GEMM with SwiGLU, down GEMM, weighted combine
//! (four launches of kernels/cuda/moe_experts.cu), then the `topk_ids` error flag.

use super::plan_error;
use crate::args::KernelArgs;
use crate::{kernels, HipBackend};
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{Backend, DeviceTensor, Error, Op, Result, Shape};
use moemla_kernel_plan::experts;

const CALL: &str = "moe_experts";

/// Runs `moe_experts`: y [T, H] in the run dtype.
pub(crate) fn run(b: &HipBackend, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
    b.check_wavefront(Op::MoeExperts)?;
    let (t, h, i, e, k) = (
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
    );
    let y = b.alloc_zeroed(&Shape::new(vec![t, h]), call.dtype)?;
    if t == 0 {
        return Ok(y);
    }
    let plan = experts::plan(t, h, i, e, k, call.dtype, &b.limits()).map_err(plan_error)?;
    let ws = &plan.workspace;
    let err = b.error_flags(1)?;
    let meta = b.workspace(ws.meta.bytes)?;
    let sorted_rows = b.workspace(ws.sorted_rows.bytes)?;
    let slot_pos = b.workspace(ws.slot_pos.bytes)?;
    let tile_expert = b.workspace(ws.tile_expert.bytes)?;
    let act = b.workspace(ws.act.bytes)?;
    let yslot = b.workspace(ws.yslot.bytes)?;
    let int = |what, v| b.int(Op::MoeExperts, what, v);
    let ptr = |t: &DeviceTensor, arg| b.device_ptr(t, CALL, arg);
    let [align, gate_up, down, combine] = &plan.launches;
    let module = &kernels::MOE_EXPERTS;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.topk_ids, "topk_ids")?)
        .ptr(ptr(call.topk_weights, "topk_weights")?)
        .i32(int("T * k", t * k)?)
        .i32(int("E", e)?)
        .i32(int("row tiles", plan.max_tiles)?)
        .ptr(ptr(&sorted_rows, "sorted_rows")?)
        .ptr(ptr(&slot_pos, "slot_pos")?)
        .ptr(ptr(&tile_expert, "tile_expert")?)
        .ptr(ptr(&meta, "meta")?)
        .ptr(ptr(&err, "err")?);
    b.launch(module, align, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.x, "x")?)
        .ptr(ptr(call.w13, "w13")?)
        .ptr(ptr(&sorted_rows, "sorted_rows")?)
        .ptr(ptr(&tile_expert, "tile_expert")?)
        .ptr(ptr(&meta, "meta")?)
        .ptr(ptr(&act, "act")?)
        .i32(int("H", h)?)
        .i32(int("I", i)?)
        .i32(int("k", k)?);
    b.launch(module, gate_up, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(&act, "act")?)
        .ptr(ptr(call.w2, "w2")?)
        .ptr(ptr(&sorted_rows, "sorted_rows")?)
        .ptr(ptr(&tile_expert, "tile_expert")?)
        .ptr(ptr(&meta, "meta")?)
        .ptr(ptr(&yslot, "yslot")?)
        .i32(int("H", h)?)
        .i32(int("I", i)?);
    b.launch(module, down, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(&yslot, "yslot")?)
        .ptr(ptr(&slot_pos, "slot_pos")?)
        .ptr(ptr(call.topk_weights, "topk_weights")?)
        .ptr(ptr(&y, "y")?)
        .i32(int("H", h)?)
        .i32(int("k", k)?);
    b.launch(module, combine, &mut args)?;

    if let Some((linear, value)) = b.read_flags(&err)?[0] {
        return Err(Error::index_out_of_range(
            Op::MoeExperts,
            "topk_ids",
            call.topk_ids.shape(),
            linear,
            value,
            format!("[-1, {e})"),
        ));
    }
    Ok(y)
}
