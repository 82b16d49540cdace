//! `moe_route`: one launch of `moemla_moe_route_<dtype>`.

use super::{buf, int_arg, OrCore};
use crate::error::DriverContext;
use crate::nvrtc::Module;
use crate::CudaBackend;
use cudarc::driver::PushKernelArg;
use moemla_core::calls::{MoeRouteCall, MoeRouteOutput};
use moemla_core::{DType, GroupSelect, Op, Result, ScoreFunc, Shape};
use moemla_kernel_plan::route;

/// Routes `call.tokens` tokens: ids [T, top_k] I32 and weights [T, top_k] F32.
pub(crate) fn run(b: &CudaBackend, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    let logits = buf(call.logits, "moe_route", "logits")?;
    let bias = call.bias.map(|t| buf(t, "moe_route", "bias")).transpose()?;
    let p = call.params;
    let int = |what, v| int_arg(Op::MoeRoute, what, v);
    let launch = route::plan(
        call.tokens,
        call.experts,
        p.top_k,
        p.n_group,
        call.logits.dtype(),
        &b.dev.limits,
    )
    .or_core()?;
    let dims = [call.tokens, p.top_k];
    let bytes = Shape::new(dims.to_vec()).byte_len(DType::I32)?;
    let ids = b.dev.alloc_zeroed(bytes).or_core()?;
    let weights = b.dev.alloc_zeroed(bytes).or_core()?;

    let has_bias = i32::from(bias.is_some());
    // Any valid pointer when there is no bias: the kernel does not read it.
    let bias_slice = bias.map(|t| &t.slice).unwrap_or(&weights);
    let experts = int("E", call.experts)?;
    let top_k = int("top_k", p.top_k)?;
    let n_group = int("n_group", p.n_group)?;
    let topk_group = int("topk_group", p.topk_group)?;
    let score_func: i32 = match p.score_func {
        ScoreFunc::Sigmoid => 0,
        ScoreFunc::Softmax => 1,
        ScoreFunc::Sqrtsoftplus => {
            return Err(moemla_core::Error::unsupported_format(
                crate::NAME,
                Op::MoeRoute,
                moemla_core::Format::Sqrtsoftplus,
            ))
        }
    };
    let group_select: i32 = match p.group_select {
        GroupSelect::Max => 0,
        GroupSelect::Top2Sum => 1,
    };
    let renormalize = i32::from(p.renormalize);
    let scale = p.routed_scaling_factor as f32;

    let (func, cfg) = b.dev.prepare(Module::MoeRoute, &launch).or_core()?;
    let mut args = b.dev.stream.launch_builder(&func);
    args.arg(&logits.slice)
        .arg(bias_slice)
        .arg(&has_bias)
        .arg(&ids)
        .arg(&weights)
        .arg(&experts)
        .arg(&top_k)
        .arg(&n_group)
        .arg(&topk_group)
        .arg(&score_func)
        .arg(&group_select)
        .arg(&renormalize)
        .arg(&scale);
    // SAFETY: parameters in the order and types of moemla_moe_route_* (kernels/README.md);
    // logits hold T * E elements, bias E, ids and weights T * top_k, as validated by core.
    unsafe { args.launch(cfg) }
        .call("cuLaunchKernel(moe_route)")
        .or_core()?;

    Ok(MoeRouteOutput {
        topk_ids: b.tensor(ids, dims, DType::I32),
        topk_weights: b.tensor(weights, dims, DType::F32),
    })
}
