//! `moe_route`: one launch of `moemla_moe_route_<DT>` (kernels/cuda/moe_route.cu).

use super::plan_error;
use crate::args::KernelArgs;
use crate::{kernels, HipBackend};
use moemla_core::calls::MoeRouteCall;
use moemla_core::{Backend, DType, GroupSelect, MoeRouteOutput, Op, Result, ScoreFunc, Shape};
use moemla_kernel_plan::route;

const CALL: &str = "moe_route";

/// Runs `moe_route`: logits [T, E] -> topk_ids [T, k] I32, topk_weights [T, k] F32.
pub(crate) fn run(b: &HipBackend, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    b.check_wavefront(Op::MoeRoute)?;
    let p = call.params;
    let launch = route::plan(
        call.tokens,
        call.experts,
        p.top_k,
        p.n_group,
        call.logits.dtype(),
        &b.limits(),
    )
    .map_err(plan_error)?;
    let out_shape = Shape::new(vec![call.tokens, p.top_k]);
    let topk_ids = b.alloc_zeroed(&out_shape, DType::I32)?;
    let topk_weights = b.alloc_zeroed(&out_shape, DType::F32)?;
    let logits = b.device_ptr(call.logits, CALL, "logits")?;
    // Without a bias the kernel never reads the pointer; any valid one will do.
    let bias = match call.bias {
        Some(t) => b.device_ptr(t, CALL, "bias")?,
        None => logits,
    };
    let mut args = KernelArgs::default();
    args.ptr(logits)
        .ptr(bias)
        .i32(call.bias.is_some() as i32)
        .ptr(b.device_ptr(&topk_ids, CALL, "topk_ids")?)
        .ptr(b.device_ptr(&topk_weights, CALL, "topk_weights")?)
        .i32(b.int(Op::MoeRoute, "E", call.experts)?)
        .i32(b.int(Op::MoeRoute, "top_k", p.top_k)?)
        .i32(b.int(Op::MoeRoute, "n_group", p.n_group)?)
        .i32(b.int(Op::MoeRoute, "topk_group", p.topk_group)?)
        .i32(match p.score_func {
            ScoreFunc::Sigmoid => 0,
            ScoreFunc::Softmax => 1,
            ScoreFunc::Sqrtsoftplus => {
                return Err(moemla_core::Error::unsupported_format(
                    crate::NAME,
                    Op::MoeRoute,
                    moemla_core::Format::Sqrtsoftplus,
                ))
            }
        })
        .i32(match p.group_select {
            GroupSelect::Max => 0,
            GroupSelect::Top2Sum => 1,
        })
        .i32(p.renormalize as i32)
        .f32(p.routed_scaling_factor as f32);
    b.launch(&kernels::MOE_ROUTE, &launch, &mut args)?;
    Ok(MoeRouteOutput {
        topk_ids,
        topk_weights,
    })
}
