//! Shape, dtype and parameter rules of `moe_route` (v1, and v2's hash routing).

use super::checks;
use crate::calls::{HashRouting, MoeRouteCall, Validated};
use crate::ops::RouteInputs;
use crate::{DType, Error, GroupSelect, Op, Result, RouteParams};

const OP: Op = Op::MoeRoute;

/// Checks a `moe_route` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    a: RouteInputs<'a>,
    params: &'a RouteParams,
) -> Result<MoeRouteCall<'a>> {
    let optional = [
        ("bias", a.bias),
        ("input_ids", a.input_ids),
        ("tid2eid", a.tid2eid),
    ];
    let mut tensors = vec![("logits", a.logits)];
    tensors.extend(optional.iter().filter_map(|&(n, t)| Some((n, t?))));
    checks::same_backend(OP, backend, &tensors)?;

    let logits = a.logits;
    checks::rank(OP, "logits", logits, 2, "[T, E]")?;
    checks::dtype_in(OP, "logits", logits, &DType::FLOATS)?;
    checks::dim_nonzero(OP, "logits", logits, 0, "T")?;
    checks::dim_nonzero(OP, "logits", logits, 1, "E")?;
    if logits.dims()[1] > i32::MAX as usize {
        // topk_ids are I32: every expert id must be representable.
        return Err(checks::dim_error(
            OP,
            "logits",
            logits,
            1,
            "E",
            format!("<= {} (expert ids are I32)", i32::MAX),
        ));
    }
    let (tokens, experts) = (logits.dims()[0], logits.dims()[1]);

    if let Some(bias) = a.bias {
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

    let hash = hash_routing(a, params, tokens)?;
    Ok(MoeRouteCall {
        logits,
        bias: a.bias,
        hash,
        params,
        tokens,
        experts,
        validated: Validated(()),
    })
}

/// The hash-routing tables, if given: both or neither, no bias, groups 1/1/"max",
/// `input_ids` `[T]` I32 and `tid2eid` `[vocab, top_k]` I32.
fn hash_routing<'a>(
    a: RouteInputs<'a>,
    p: &RouteParams,
    tokens: usize,
) -> Result<Option<HashRouting<'a>>> {
    let (input_ids, tid2eid) = match (a.input_ids, a.tid2eid) {
        (None, None) => return Ok(None),
        (Some(ids), Some(table)) => (ids, table),
        (ids, _) => {
            let (arg, other) = if ids.is_some() {
                ("tid2eid", "input_ids")
            } else {
                ("input_ids", "tid2eid")
            };
            return Err(Error::Input {
                op: OP,
                arg,
                expected: format!("given together with `{other}` (hash routing)"),
                got: "absent".into(),
            });
        }
    };
    if a.bias.is_some() {
        return Err(Error::Input {
            op: OP,
            arg: "bias",
            expected: "absent with hash routing (`input_ids` + `tid2eid`)".into(),
            got: "a bias tensor".into(),
        });
    }
    let hash = || "1 with hash routing".to_string();
    checks::param(OP, "n_group", p.n_group == 1, hash, p.n_group)?;
    checks::param(OP, "topk_group", p.topk_group == 1, hash, p.topk_group)?;
    checks::param(
        OP,
        "group_select",
        p.group_select == GroupSelect::Max,
        || "\"max\" with hash routing".into(),
        serde_json::to_string(&p.group_select).unwrap_or_default(),
    )?;
    checks::rank(OP, "input_ids", input_ids, 1, "[T]")?;
    checks::dtype_in(OP, "input_ids", input_ids, &[DType::I32])?;
    checks::dim_eq(OP, "input_ids", input_ids, 0, "T", tokens, "T of logits")?;
    checks::rank(OP, "tid2eid", tid2eid, 2, "[vocab, top_k]")?;
    checks::dtype_in(OP, "tid2eid", tid2eid, &[DType::I32])?;
    checks::dim_nonzero(OP, "tid2eid", tid2eid, 0, "vocab")?;
    checks::dim_eq(OP, "tid2eid", tid2eid, 1, "top_k", p.top_k, "params top_k")?;
    Ok(Some(HashRouting {
        input_ids,
        tid2eid,
        vocab: tid2eid.dims()[0],
    }))
}
