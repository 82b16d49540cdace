//! `moe_route`: one launch of `moemla_moe_route_<DT>` (kernels/README.md, moe_route.cu).

use super::{int, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::{MoeRouteCall, MoeRouteOutput};
use moemla_core::{DType, GroupSelect, Op, Result, ScoreFunc};
use moemla_kernel_plan::route;

const CALL: &str = "moe_route";

/// Routes `call.tokens` tokens: ids [T, top_k] I32 and weights [T, top_k] F32.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MoeRouteCall<'_>,
) -> Result<MoeRouteOutput> {
    let op = Op::MoeRoute;
    let p = call.params;
    let logits = g.buffer(call.logits, CALL, "logits")?;
    let bias = call.bias.map(|t| g.buffer(t, CALL, "bias")).transpose()?;
    g.dev.enter()?;
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
        // Not in the kernels (contract v2): refused before anything is allocated.
        ScoreFunc::Sqrtsoftplus => {
            return Err(moemla_core::Error::unsupported_format(
                D::NAME,
                op,
                moemla_core::Format::Sqrtsoftplus,
            ))
        }
    };
    let dims = [call.tokens, p.top_k];
    let bytes = moemla_core::Shape::new(dims.to_vec()).byte_len(DType::I32)?;
    let (ids, shape) = g.output(&dims, DType::I32, bytes)?;
    let (weights, _) = g.output(&dims, DType::F32, bytes)?;
    let args = [
        Arg::Ptr(logits.address()),
        // Any valid pointer when there is no bias: the kernel does not read it.
        Arg::Ptr(bias.unwrap_or(logits).address()),
        Arg::I32(i32::from(bias.is_some())),
        Arg::Ptr(ids.address()),
        Arg::Ptr(weights.address()),
        int::<D>(op, "E", call.experts)?,
        int::<D>(op, "top_k", p.top_k)?,
        int::<D>(op, "n_group", p.n_group)?,
        int::<D>(op, "topk_group", p.topk_group)?,
        Arg::I32(score_func),
        Arg::I32(match p.group_select {
            GroupSelect::Max => 0,
            GroupSelect::Top2Sum => 1,
        }),
        Arg::I32(i32::from(p.renormalize)),
        Arg::F32(p.routed_scaling_factor as f32),
    ];
    g.launch(Module::MoeRoute, &launch, &args)?;
    Ok(MoeRouteOutput {
        topk_ids: g.tensor(ids, shape.clone(), DType::I32),
        topk_weights: g.tensor(weights, shape, DType::F32),
    })
}
