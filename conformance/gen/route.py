"""moe_route cases: build inputs without near-ties, compute expected outputs, verify."""

import numpy as np

import lowp
import ops_ref
from case import Case, case_rng
from checks import (
    ROUTE_MARGIN,
    CaseError,
    check_not_degenerate,
    route_row_margin,
    within_tolerance,
    worst_violation,
)
from writer import to_run_dtype

# Routing computes in f32 whatever the logits' storage dtype, so weights can be held to f32
# accuracy (tighter than the f16/bf16 defaults, equal to the f32 one).
WEIGHT_TOLERANCE = {"topk_weights": {"atol": 1e-4, "rtol": 1e-4}}
MAX_RESAMPLES = 1000


def _logit_row(rng, experts, logit_std, bias, params, dtype):
    """Draw one token's logits until its selection has a clear margin everywhere."""
    for _ in range(MAX_RESAMPLES):
        row = to_run_dtype(rng.standard_normal(experts) * logit_std, dtype)
        s, masked = ops_ref.route_selection_scores(row[None, :], bias, params)
        unmasked = s[0] + (0.0 if bias is None else bias.astype(np.float64))
        if route_row_margin(masked[0], unmasked, params) > ROUTE_MARGIN:
            return row
    raise CaseError(f"no tie-free logits after {MAX_RESAMPLES} draws")


def build(dtype, name, description, tokens, experts, params, logit_std, bias_std=None):
    """A routing case: T tokens over E experts; bias drawn N(0, bias_std) if given."""
    rng = case_rng("moe_route", dtype, name)
    bias = None
    if bias_std is not None:
        bias = (rng.standard_normal(experts) * bias_std).astype(np.float32)
    logits = np.stack([_logit_row(rng, experts, logit_std, bias, params, dtype) for _ in range(tokens)])
    ids, weights = ops_ref.moe_route(logits, bias, params)
    tensors = {"in.logits": logits}
    if bias is not None:
        tensors["in.bias"] = bias
    tensors["out.topk_ids"] = ids
    tensors["out.topk_weights"] = weights.astype(np.float32)
    case = Case("moe_route", dtype, name, description, params, tensors, WEIGHT_TOLERANCE)
    case.check_ratio = _verify(case, logits, bias, weights)
    return case


def _verify(case, logits, bias, weights):
    """Degenerate-output and float32-recomputation checks."""
    ids = case.tensors["out.topk_ids"]
    check_not_degenerate(f"{case.path} out.topk_weights", weights, rms_range=(0.01, 20.0))
    if ids.shape[0] > 1 and len(np.unique(ids)) <= ids.shape[1]:
        raise CaseError(f"{case.path} out.topk_ids: every token picks the same experts")
    got_ids, got_w = lowp.moe_route(logits, bias, case.params)
    tol = case.tolerance["topk_weights"]
    worst = 0.0
    for t in range(ids.shape[0]):
        if set(got_ids[t]) != set(ids[t]):
            raise CaseError(f"{case.path}: float32 routing picks other experts for token {t}")
        order = [list(got_ids[t]).index(e) for e in ids[t]]
        if not within_tolerance(got_w[t, order], weights[t], tol["atol"], tol["rtol"]):
            ratio = worst_violation(got_w[t, order], weights[t], tol["atol"], tol["rtol"])
            raise CaseError(f"{case.path}: float32 weights off by {ratio:.2f}x the tolerance")
        worst = max(worst, worst_violation(got_w[t, order], weights[t], tol["atol"], tol["rtol"]))
    return worst
