//! Shape, dtype and parameter rules of `moe_experts` (v1, and v2's FP8 weights, shared
//! experts and parameters).

use super::checks;
use crate::calls::{BlockScales, MoeExpertsCall, SharedExperts, Validated};
use crate::fp8::BLOCK;
use crate::ops::ExpertsInputs;
use crate::{ActivationQuant, DType, DeviceTensor, Error, ExpertWeight, ExpertsParams, Op, Result};

const OP: Op = Op::MoeExperts;

/// Checks a `moe_experts` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: ExpertsInputs<'a>,
    params: &'a ExpertsParams,
) -> Result<MoeExpertsCall<'a>> {
    let mut tensors = vec![
        ("x", a.x),
        ("w13", a.w13),
        ("w2", a.w2),
        ("topk_ids", a.topk_ids),
        ("topk_weights", a.topk_weights),
    ];
    tensors.extend(a.w13_scale.map(|t| ("w13_scale", t)));
    tensors.extend(a.w2_scale.map(|t| ("w2_scale", t)));
    tensors.extend(a.shared_w13.map(|t| ("shared_w13", t)));
    tensors.extend(a.shared_w2.map(|t| ("shared_w2", t)));
    checks::same_backend(OP, backend, &tensors)?;

    checks::rank(OP, "x", a.x, 2, "[T, H]")?;
    checks::rank(OP, "w13", a.w13, 3, "[E, 2I, H]")?;
    checks::rank(OP, "w2", a.w2, 3, "[E, H, I]")?;
    checks::rank(OP, "topk_ids", a.topk_ids, 2, "[T, k]")?;
    checks::rank(OP, "topk_weights", a.topk_weights, 2, "[T, k]")?;

    checks::dtype_in(OP, "x", a.x, &DType::FLOATS)?;
    let dtype = a.x.dtype();
    let fp8 = weight_dtypes(a.w13, a.w2, dtype)?;
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

    let fp8_scales = if fp8 {
        let w13_scale = required_scale(a.w13_scale, "w13_scale")?;
        let w2_scale = required_scale(a.w2_scale, "w2_scale")?;
        let blocks = |n: usize| n.div_ceil(BLOCK);
        scale_shape(
            w13_scale,
            "w13_scale",
            experts,
            blocks(two_i),
            blocks(hidden),
        )?;
        scale_shape(w2_scale, "w2_scale", experts, blocks(hidden), blocks(inter))?;
        Some(BlockScales {
            w13_scale,
            w2_scale,
        })
    } else {
        for (arg, t) in [("w13_scale", a.w13_scale), ("w2_scale", a.w2_scale)] {
            if let Some(t) = t {
                return Err(Error::Input {
                    op: OP,
                    arg,
                    expected: "absent: block scales go with F8_E4M3 weights only".into(),
                    got: format!("a {} {} tensor with {dtype} weights", t.dtype(), t.shape()),
                });
            }
        }
        None
    };

    let shared = shared_experts(&a, dtype, fp8, hidden)?;

    checks::param(
        OP,
        "activation_quant",
        fp8 || params.activation_quant == ActivationQuant::None,
        || "\"none\" unless the weights are F8_E4M3 (fp8_block128 is w8a8)".into(),
        format!("\"fp8_block128\" with {dtype} weights"),
    )?;
    if let Some(limit) = params.swiglu_limit {
        checks::param(
            OP,
            "swiglu_limit",
            checks::finite_positive_f32(limit),
            || "null, or finite and > 0 as an f32".into(),
            limit,
        )?;
    }

    Ok(MoeExpertsCall {
        x: a.x,
        w13: a.w13,
        w2: a.w2,
        fp8_scales,
        topk_ids: a.topk_ids,
        topk_weights: a.topk_weights,
        shared,
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

/// The shared experts, if given: both tensors or neither, rank 3, the run dtype (and
/// run-dtype routed weights), `shared_w13` [S, 2Is, H] and `shared_w2` [S, H, Is].
fn shared_experts<'a>(
    a: &ExpertsInputs<'a>,
    run: DType,
    fp8: bool,
    hidden: usize,
) -> Result<Option<SharedExperts<'a>>> {
    let (w13, w2) = match (a.shared_w13, a.shared_w2) {
        (None, None) => return Ok(None),
        (Some(w13), Some(w2)) => (w13, w2),
        (w13, _) => {
            let (arg, other) = match w13 {
                None => ("shared_w13", "shared_w2"),
                Some(_) => ("shared_w2", "shared_w13"),
            };
            return Err(Error::Input {
                op: OP,
                arg,
                expected: format!("given together with {other} (shared experts)"),
                got: "absent".into(),
            });
        }
    };
    if fp8 {
        return Err(Error::Input {
            op: OP,
            arg: "shared_w13",
            expected: "absent with F8_E4M3 routed weights: fused shared experts need run-dtype \
                       routed weights (run the shared experts as their own call)"
                .into(),
            got: format!("a {} {} tensor", w13.dtype(), w13.shape()),
        });
    }
    checks::rank(OP, "shared_w13", w13, 3, "[S, 2Is, H]")?;
    checks::rank(OP, "shared_w2", w2, 3, "[S, H, Is]")?;
    for (arg, t) in [("shared_w13", w13), ("shared_w2", w2)] {
        if t.dtype() != run {
            return Err(Error::DType {
                op: OP,
                arg,
                expected: format!("the dtype of x ({run})"),
                got: t.dtype(),
            });
        }
    }
    checks::dim_nonzero(OP, "shared_w13", w13, 0, "S")?;
    let count = w13.dims()[0];
    let two_i = w13.dims()[1];
    if two_i == 0 || !two_i.is_multiple_of(2) {
        let why = "even and >= 2".into();
        return Err(checks::dim_error(OP, "shared_w13", w13, 1, "2Is", why));
    }
    let inter = two_i / 2;
    checks::dim_eq(OP, "shared_w13", w13, 2, "H", hidden, "H of x")?;
    checks::dim_eq(OP, "shared_w2", w2, 0, "S", count, "S of shared_w13")?;
    checks::dim_eq(OP, "shared_w2", w2, 1, "H", hidden, "H of x")?;
    let why = "half of dim 1 of shared_w13";
    checks::dim_eq(OP, "shared_w2", w2, 2, "Is", inter, why)?;
    Ok(Some(SharedExperts {
        w13,
        w2,
        count,
        inter,
    }))
}

/// Checks a tensor handed to `pack_expert_weights` as the `moe_experts` weight `kind`:
/// on `backend`, rank 3, a float or F8E4M3 dtype, no empty dim, and for gate and up
/// projections an even dim 1 (2I).
pub(crate) fn packable(backend: &str, w: &DeviceTensor, kind: ExpertWeight) -> Result<()> {
    let arg = kind.arg();
    checks::same_backend(OP, backend, &[(arg, w)])?;
    let (layout, names) = match kind {
        ExpertWeight::GateUp => ("[E, 2I, H]", ["E", "2I", "H"]),
        ExpertWeight::Down => ("[E, H, I]", ["E", "H", "I"]),
    };
    checks::rank(OP, arg, w, 3, layout)?;
    let dtypes = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3];
    checks::dtype_in(OP, arg, w, &dtypes)?;
    for (dim, name) in names.into_iter().enumerate() {
        checks::dim_nonzero(OP, arg, w, dim, name)?;
    }
    if kind == ExpertWeight::GateUp && !w.dims()[1].is_multiple_of(2) {
        return Err(checks::dim_error(OP, arg, w, 1, "2I", "even".into()));
    }
    Ok(())
}

/// The weights are both the run dtype, or both F8E4M3: returns whether they are FP8.
fn weight_dtypes(w13: &DeviceTensor, w2: &DeviceTensor, run: DType) -> Result<bool> {
    let fp8 = w13.dtype() == DType::F8E4M3;
    if !fp8 && w13.dtype() != run {
        return Err(Error::DType {
            op: OP,
            arg: "w13",
            expected: format!("the dtype of x ({run}) or F8_E4M3"),
            got: w13.dtype(),
        });
    }
    let want = w13.dtype();
    if w2.dtype() != want {
        return Err(Error::DType {
            op: OP,
            arg: "w2",
            expected: format!("{want}, as w13 (both weights FP8 or neither)"),
            got: w2.dtype(),
        });
    }
    Ok(fp8)
}

/// A scale that FP8 weights require.
fn required_scale<'a>(t: Option<&'a DeviceTensor>, arg: &'static str) -> Result<&'a DeviceTensor> {
    t.ok_or_else(|| Error::Input {
        op: OP,
        arg,
        expected: "given with F8_E4M3 weights (both w13_scale and w2_scale)".into(),
        got: "absent".into(),
    })
}

/// A block-scale tensor must be F32 [E, rows, cols] (rows and cols counted in 128-blocks).
fn scale_shape(
    t: &DeviceTensor,
    arg: &'static str,
    experts: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (layout, row_why, col_why) = if arg == "w13_scale" {
        (
            "[E, ceil(2I/128), ceil(H/128)]",
            "ceil(2I / 128)",
            "ceil(H / 128)",
        )
    } else {
        (
            "[E, ceil(H/128), ceil(I/128)]",
            "ceil(H / 128)",
            "ceil(I / 128)",
        )
    };
    checks::rank(OP, arg, t, 3, layout)?;
    checks::dtype_in(OP, arg, t, &[DType::F32])?;
    checks::dim_eq(OP, arg, t, 0, "E", experts, "E of w13")?;
    checks::dim_eq(OP, arg, t, 1, "row blocks", rows, row_why)?;
    checks::dim_eq(OP, arg, t, 2, "column blocks", cols, col_why)
}
