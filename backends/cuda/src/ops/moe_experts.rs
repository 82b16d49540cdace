//! `moe_experts`: align, gate/up GEMM + SwiGLU, down GEMM, combine (four launches).

use super::{as_i32, buf, read_flags, unconfirmed_flag, OrCore};
use crate::error::DriverContext;
use crate::nvrtc::Module;
use crate::CudaBackend;
use cudarc::driver::PushKernelArg;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{indices, DeviceTensor, Result};
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
    let elem = call.dtype.size_in_bytes();
    let dev = &b.dev;

    let err = dev.upload(&[i32::MAX]).or_core()?;
    let meta = dev.alloc_zeroed(ws.meta * 4).or_core()?;
    let sorted_rows = dev.alloc_zeroed(ws.sorted_rows * 4).or_core()?;
    let slot_pos = dev.alloc_zeroed(ws.slot_pos * 4).or_core()?;
    let tile_expert = dev.alloc_zeroed(ws.tile_expert * 4).or_core()?;
    let act = dev.alloc_zeroed(ws.act * elem).or_core()?;
    let yslot = dev.alloc_zeroed(ws.yslot * 4).or_core()?;
    let y = dev
        .alloc_zeroed(call.tokens * call.hidden * elem)
        .or_core()?;

    let slots = (call.tokens * call.top_k) as i32;
    let n_experts = call.experts as i32;
    let max_tiles = plan.max_tiles as i32;
    let hidden = call.hidden as i32;
    let inter = call.inter as i32;
    let top_k = call.top_k as i32;

    // 1. align
    let (f, cfg) = dev
        .prepare(Module::MoeExperts, &plan.launches[0])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&ids.slice)
        .arg(&slots)
        .arg(&n_experts)
        .arg(&max_tiles)
        .arg(&sorted_rows)
        .arg(&slot_pos)
        .arg(&tile_expert)
        .arg(&meta)
        .arg(&err);
    // SAFETY: moemla_moe_align's parameters in order; the workspace is sized by the plan
    // (sorted_rows max_tiles * 64, slot_pos T * k, tile_expert max_tiles, meta 1, err 1).
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

    let flag = read_flags(b, &err, 1)?[0];
    if flag != i32::MAX {
        let host_ids = as_i32(
            &dev.download(&ids.slice, 0, call.topk_ids.size_in_bytes())
                .or_core()?,
        );
        indices::check_topk_ids(call, &host_ids)?;
        return Err(unconfirmed_flag("moe_align", flag));
    }
    Ok(b.tensor(y, [call.tokens, call.hidden], call.dtype))
}
