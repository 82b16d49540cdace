//! `moe_experts`: align, gate/up GEMM + SwiGLU, down GEMM, combine (four launches).

use super::{buf, int_arg, read_flags, OrCore};
use crate::error::DriverContext;
use crate::nvrtc::Module;
use crate::CudaBackend;
use cudarc::driver::PushKernelArg;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{DeviceTensor, Error, Op, Result};
use moemla_kernel_plan::experts;

/// Runs the fused experts; `y` [T, H] in the run dtype.
pub(crate) fn run(b: &CudaBackend, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
    let x = buf(call.x, "moe_experts", "x")?;
    let w13 = buf(call.w13, "moe_experts", "w13")?;
    let w2 = buf(call.w2, "moe_experts", "w2")?;
    let ids = buf(call.topk_ids, "moe_experts", "topk_ids")?;
    let weights = buf(call.topk_weights, "moe_experts", "topk_weights")?;
    let plan = experts::plan(
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
        call.dtype,
        &b.dev.limits,
    )
    .or_core()?;
    let ws = plan.workspace;
    let dev = &b.dev;
    let int = |what, v| int_arg(Op::MoeExperts, what, v);

    let err = dev.upload(&[u64::MAX]).or_core()?;
    let meta = dev.alloc_zeroed(ws.meta.bytes).or_core()?;
    let sorted_rows = dev.alloc_zeroed(ws.sorted_rows.bytes).or_core()?;
    let slot_pos = dev.alloc_zeroed(ws.slot_pos.bytes).or_core()?;
    let tile_expert = dev.alloc_zeroed(ws.tile_expert.bytes).or_core()?;
    let act = dev.alloc_zeroed(ws.act.bytes).or_core()?;
    let yslot = dev.alloc_zeroed(ws.yslot.bytes).or_core()?;
    let y = dev.alloc_zeroed(plan.y_bytes).or_core()?;

    let slots = int("T * k", plan.slots)?;
    let n_experts = int("E", call.experts)?;
    let max_tiles = int("row tiles", plan.max_tiles)?;
    let hidden = int("H", call.hidden)?;
    let inter = int("I", call.inter)?;
    let top_k = int("k", call.top_k)?;

    // 1. align
    let (f, cfg) = dev
        .prepare(Module::MoeExperts, &plan.launches[0])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&ids.slice)
        .arg(&weights.slice)
        .arg(&slots)
        .arg(&n_experts)
        .arg(&max_tiles)
        .arg(&sorted_rows)
        .arg(&slot_pos)
        .arg(&tile_expert)
        .arg(&meta)
        .arg(&err);
    // SAFETY: moemla_moe_align's parameters in order; topk_weights [T, k]; the workspace is
    // sized by the plan (sorted_rows max_tiles * 64, slot_pos T * k, tile_expert max_tiles,
    // meta 1, err one u64).
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(moe_align)")
        .or_core()?;

    // 2. gate/up + SwiGLU
    let (f, cfg) = dev
        .prepare(Module::MoeExperts, &plan.launches[1])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&x.slice)
        .arg(&w13.slice)
        .arg(&sorted_rows)
        .arg(&tile_expert)
        .arg(&meta)
        .arg(&act)
        .arg(&hidden)
        .arg(&inter)
        .arg(&top_k);
    // SAFETY: moemla_moe_gate_up_*'s parameters in order; x [T, H], w13 [E, 2I, H] as
    // validated; act holds max_tiles * 64 * I elements; tiles past meta[0] return at once.
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(moe_gate_up)")
        .or_core()?;

    // 3. down
    let (f, cfg) = dev
        .prepare(Module::MoeExperts, &plan.launches[2])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&act)
        .arg(&w2.slice)
        .arg(&sorted_rows)
        .arg(&tile_expert)
        .arg(&meta)
        .arg(&yslot)
        .arg(&hidden)
        .arg(&inter);
    // SAFETY: moemla_moe_down_*'s parameters in order; w2 [E, H, I]; yslot holds
    // max_tiles * 64 * H f32.
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(moe_down)")
        .or_core()?;

    // 4. combine
    let (f, cfg) = dev
        .prepare(Module::MoeExperts, &plan.launches[3])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&yslot)
        .arg(&slot_pos)
        .arg(&weights.slice)
        .arg(&y)
        .arg(&hidden)
        .arg(&top_k);
    // SAFETY: moemla_moe_combine_*'s parameters in order; topk_weights [T, k]; y [T, H].
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(moe_combine)")
        .or_core()?;

    if let Some((linear, value)) = read_flags(b, &err, 1)?[0] {
        return Err(Error::index_out_of_range(
            Op::MoeExperts,
            "topk_ids",
            call.topk_ids.shape(),
            linear,
            value,
            format!("[-1, {})", call.experts),
        ));
    }
    Ok(b.tensor(y, [call.tokens, call.hidden], call.dtype))
}
