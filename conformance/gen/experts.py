"""moe_experts cases: routed SwiGLU experts with edge-case routings."""

import numpy as np

import lowp
import ops_ref
from case import Case, case_rng
from checks import DEFAULT_TOLERANCE, CaseError, check_not_degenerate, within_tolerance, worst_violation
from writer import RUN_DTYPES, to_run_dtype


def _routing(rng, tokens, experts, top_k, unused, hot, empty_slots):
    """topk_ids [T,k] (distinct per row) and topk_weights [T,k] in (0.1, 1).

    unused: an expert no token picks; hot: an expert every token picks (slot 0);
    empty_slots: (t, j) pairs set to -1 ("no expert").
    """
    allowed = [e for e in range(experts) if e != unused and e != hot]
    ids = np.empty((tokens, top_k), dtype=np.int32)
    for t in range(tokens):
        if hot is None:
            ids[t] = rng.choice(allowed, size=top_k, replace=False)
        else:
            ids[t, 0] = hot
            ids[t, 1:] = rng.choice(allowed, size=top_k - 1, replace=False)
    for t, j in empty_slots:
        ids[t, j] = -1
    weights = rng.uniform(0.1, 1.0, size=(tokens, top_k)).astype(np.float32)
    return ids, weights


def build(dtype, name, description, tokens, hidden, inter, experts, top_k, unused=None, hot=None, empty_slots=()):
    """An experts case; x ~ N(0,1), W13 ~ N(0, 1/H), W2 ~ N(0, 1/(4I)): y is O(0.3).

    Keeping |y| mostly below 1 leaves f16/bf16 rounding of the expert outputs well inside
    the contract's tolerance (see lowp.py).
    """
    rng = case_rng("moe_experts", dtype, name)
    ids, weights = _routing(rng, tokens, experts, top_k, unused, hot, empty_slots)
    x = to_run_dtype(rng.standard_normal((tokens, hidden)), dtype)
    w13 = to_run_dtype(rng.standard_normal((experts, 2 * inter, hidden)) / np.sqrt(hidden), dtype)
    w2 = to_run_dtype(rng.standard_normal((experts, hidden, inter)) * (0.5 / np.sqrt(inter)), dtype)
    y = ops_ref.moe_experts(x, w13, w2, ids, weights)
    tensors = {
        "in.x": x,
        "in.w13": w13,
        "in.w2": w2,
        "in.topk_ids": ids,
        "in.topk_weights": weights,
        "out.y": y.astype(np.float32),
    }
    case = Case("moe_experts", dtype, name, description, {}, tensors)
    case.check_ratio = _verify(case, y)
    return case


def _verify(case, y):
    """Degenerate-output check and run-dtype-rounded float32 recomputation."""
    t = case.tensors
    routed = (t["in.topk_ids"] >= 0).any(axis=1)
    if not np.all(y[~routed] == 0):
        raise CaseError(f"{case.path}: a token with no expert has a non-zero output")
    check_not_degenerate(f"{case.path} out.y", y, meaningful=routed)
    got = lowp.moe_experts(t["in.x"], t["in.w13"], t["in.w2"], t["in.topk_ids"], t["in.topk_weights"], RUN_DTYPES[case.dtype])
    atol, rtol = DEFAULT_TOLERANCE[case.dtype]
    if not within_tolerance(got, y, atol, rtol):
        ratio = worst_violation(got, y, atol, rtol)
        raise CaseError(f"{case.path}: low-precision kernel model off by {ratio:.2f}x the tolerance")
    return worst_violation(got, y, atol, rtol)
