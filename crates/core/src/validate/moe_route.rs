//! Shape, dtype and parameter rules of `moe_route`.

use super::checks;
use crate::calls::{MoeRouteCall, Validated};
use crate::{DType, DeviceTensor, Op, Result, RouteParams};

const OP: Op = Op::MoeRoute;

/// Checks a `moe_route` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    logits: &'a DeviceTensor,
    bias: Option<&'a DeviceTensor>,
    params: &'a RouteParams,
) -> Result<MoeRouteCall<'a>> {
    let mut tensors = vec![("logits", logits)];
    tensors.extend(bias.map(|b| ("bias", b)));
    checks::same_backend(OP, backend, &tensors)?;

    checks::rank(OP, "logits", logits, 2, "[T, E]")?;
    checks::dtype_in(OP, "logits", logits, &DType::FLOATS)?;
    checks::dim_nonzero(OP, "logits", logits, 0, "T")?;
    checks::dim_nonzero(OP, "logits", logits, 1, "E")?;
    let (tokens, experts) = (logits.dims()[0], logits.dims()[1]);

    if let Some(bias) = bias {
        checks::rank(OP, "bias", bias, 1, "[E]")?;
        checks::dim_eq(OP, "bias", bias, 0, "E", experts, "E of logits")?;
        checks::dtype_in(OP, "bias", bias, &[DType::F32])?;
    }

    let p = params;
    checks::param(OP, "top_k", p.top_k >= 1, || ">= 1".into(), p.top_k)?;
    checks::param(
        OP,
        "top_k",
        p.top_k <= experts,
        || format!("<= E ({experts})"),
        p.top_k,
    )?;
    checks::param(OP, "n_group", p.n_group >= 1, || ">= 1".into(), p.n_group)?;
    checks::param(
        OP,
        "n_group",
        experts.is_multiple_of(p.n_group),
        || format!("a divisor of E ({experts})"),
        p.n_group,
    )?;
    checks::param(
        OP,
        "topk_group",
        p.topk_group >= 1,
        || ">= 1".into(),
        p.topk_group,
    )?;
    checks::param(
        OP,
        "topk_group",
        p.topk_group <= p.n_group,
        || format!("<= n_group ({})", p.n_group),
        p.topk_group,
    )?;
    let reachable = p.topk_group * (experts / p.n_group);
    checks::param(
        OP,
        "top_k",
        p.top_k <= reachable,
        || format!("<= topk_group * E / n_group ({reachable})"),
        p.top_k,
    )?;
    checks::param(
        OP,
        "routed_scaling_factor",
        (p.routed_scaling_factor as f32).is_finite(),
        || "finite as an f32 (what kernels compute with)".into(),
        p.routed_scaling_factor,
    )?;

    Ok(MoeRouteCall {
        logits,
        bias,
        params,
        tokens,
        experts,
        validated: Validated(()),
    })
}
