//! Shape, dtype and parameter rules of `moe_experts`.

use super::checks;
use crate::calls::{MoeExpertsCall, Validated};
use crate::{DType, DeviceTensor, ExpertsParams, Op, Result};

const OP: Op = Op::MoeExperts;

/// The tensors of a `moe_experts` call, by contract name.
pub(crate) struct ExpertsArgs<'a> {
    pub x: &'a DeviceTensor,
    pub w13: &'a DeviceTensor,
    pub w2: &'a DeviceTensor,
    pub topk_ids: &'a DeviceTensor,
    pub topk_weights: &'a DeviceTensor,
}

/// Checks a `moe_experts` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: ExpertsArgs<'a>,
    params: &'a ExpertsParams,
) -> Result<MoeExpertsCall<'a>> {
    checks::same_backend(
        OP,
        backend,
        &[
            ("x", a.x),
            ("w13", a.w13),
            ("w2", a.w2),
            ("topk_ids", a.topk_ids),
            ("topk_weights", a.topk_weights),
        ],
    )?;

    checks::rank(OP, "x", a.x, 2, "[T, H]")?;
    checks::rank(OP, "w13", a.w13, 3, "[E, 2I, H]")?;
    checks::rank(OP, "w2", a.w2, 3, "[E, H, I]")?;
    checks::rank(OP, "topk_ids", a.topk_ids, 2, "[T, k]")?;
    checks::rank(OP, "topk_weights", a.topk_weights, 2, "[T, k]")?;

    checks::dtype_in(OP, "x", a.x, &DType::FLOATS)?;
    let dtype = a.x.dtype();
    checks::dtype_same(OP, "w13", a.w13, "x", dtype)?;
    checks::dtype_same(OP, "w2", a.w2, "x", dtype)?;
    checks::dtype_in(OP, "topk_ids", a.topk_ids, &[DType::I32])?;
    checks::dtype_in(OP, "topk_weights", a.topk_weights, &[DType::F32])?;

    checks::dim_nonzero(OP, "x", a.x, 0, "T")?;
    checks::dim_nonzero(OP, "x", a.x, 1, "H")?;
    let (tokens, hidden) = (a.x.dims()[0], a.x.dims()[1]);
    checks::dim_nonzero(OP, "w13", a.w13, 0, "E")?;
    let experts = a.w13.dims()[0];
    let two_i = a.w13.dims()[1];
    if two_i == 0 || !two_i.is_multiple_of(2) {
        return Err(checks::dim_error(
            OP,
            "w13",
            a.w13,
            1,
            "2I",
            "even and >= 2".into(),
        ));
    }
    let inter = two_i / 2;
    checks::dim_eq(OP, "w13", a.w13, 2, "H", hidden, "H of x")?;
    checks::dim_eq(OP, "w2", a.w2, 0, "E", experts, "E of w13")?;
    checks::dim_eq(OP, "w2", a.w2, 1, "H", hidden, "H of x")?;
    checks::dim_eq(OP, "w2", a.w2, 2, "I", inter, "half of dim 1 of w13")?;
    checks::dim_eq(OP, "topk_ids", a.topk_ids, 0, "T", tokens, "T of x")?;
    checks::dim_nonzero(OP, "topk_ids", a.topk_ids, 1, "k")?;
    let top_k = a.topk_ids.dims()[1];
    checks::dim_eq(OP, "topk_weights", a.topk_weights, 0, "T", tokens, "T of x")?;
    checks::dim_eq(
        OP,
        "topk_weights",
        a.topk_weights,
        1,
        "k",
        top_k,
        "k of topk_ids",
    )?;

    Ok(MoeExpertsCall {
        x: a.x,
        w13: a.w13,
        w2: a.w2,
        topk_ids: a.topk_ids,
        topk_weights: a.topk_weights,
        params,
        dtype,
        tokens,
        hidden,
        inter,
        experts,
        top_k,
        validated: Validated(()),
    })
}
