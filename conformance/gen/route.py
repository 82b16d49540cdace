"""moe_route cases: build inputs without near-ties, compute expected outputs, verify."""

import numpy as np

import lowp
import ops_ref
from case import Case, case_rng
from checks import (
    ROUTE_MARGIN,
    CaseError,
    check_not_degenerate,
    fair_keyed,
    record_fairness,
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


# ---- contract v2: sqrtsoftplus, hash routing, renormalisation of all-zero rows --------------

# Logit of the all-zero rows: sigmoid, softplus and sqrt(softplus) are exactly 0 in f32 and f64.
ZERO_SCORE_LOGIT = -1000.0
# Garbage in the tid2eid rows no token reads (the contract does not check them).
UNREAD_ROW_GARBAGE = (-1, 2147480000, -2147483648)


def build_v2(dtype, name, description, tokens, experts, params, logit_std, bias_std=None, zero_rows=(), hash_vocab=None):
    """A v2 routing case.

    zero_rows: tokens whose logits are all -1000 (every score exactly 0: renormalisation by
    max(sum, 1e-20) gives weights 0; the bias alone decides the ids, so it is redrawn until
    those rows have clear margins). hash_vocab: hash routing with a random tid2eid [vocab,
    top_k] of distinct ids; tokens read some rows (several tokens the same row), and three
    rows no token reads hold out-of-range and duplicate ids.
    """
    rng = case_rng("moe_route", dtype, name)
    top_k = params["top_k"]
    bias = None
    if bias_std is not None:
        for _ in range(MAX_RESAMPLES):
            bias = (rng.standard_normal(experts) * bias_std).astype(np.float32)
            zero = np.zeros((1, experts))
            if not zero_rows or route_row_margin(ops_ref.route_selection_scores(zero + ZERO_SCORE_LOGIT, bias, params)[1][0], bias.astype(np.float64), params) > ROUTE_MARGIN:
                break
        else:
            raise CaseError(f"moe_route/{dtype}/{name}: no bias with clear margins for the zero rows")
    elif zero_rows and hash_vocab is None:
        raise CaseError(f"moe_route/{dtype}/{name}: zero rows need a bias to decide their ids")
    tensors = {}
    input_ids = tid2eid = None
    if hash_vocab is None:
        rows = []
        for t in range(tokens):
            if t in zero_rows:
                rows.append(to_run_dtype(np.full(experts, ZERO_SCORE_LOGIT), dtype))
            else:
                rows.append(_logit_row(rng, experts, logit_std, bias, params, dtype))
        logits = np.stack(rows)
    else:
        logits = to_run_dtype(rng.standard_normal((tokens, experts)) * logit_std, dtype)
        for t in zero_rows:
            logits[t] = ZERO_SCORE_LOGIT
        tid2eid = np.stack([rng.choice(experts, size=top_k, replace=False) for _ in range(hash_vocab)]).astype(np.int32)
        input_ids = rng.randint(0, hash_vocab - 3, size=tokens).astype(np.int32)
        input_ids[-1] = input_ids[0]  # two tokens read the same row
        for r, bad in zip(range(hash_vocab - 3, hash_vocab), UNREAD_ROW_GARBAGE):
            tid2eid[r, 0] = bad
            tid2eid[r, 1] = tid2eid[r, 2]  # duplicate ids
    tensors["in.logits"] = logits
    if bias is not None:
        tensors["in.bias"] = bias
    if hash_vocab is not None:
        tensors["in.input_ids"] = input_ids
        tensors["in.tid2eid"] = tid2eid
    ids, weights = ops_ref.moe_route(logits, bias, params, input_ids, tid2eid)
    tensors["out.topk_ids"] = ids
    tensors["out.topk_weights"] = weights.astype(np.float32)
    case = Case("moe_route", dtype, name, description, params, tensors, WEIGHT_TOLERANCE)
    _verify_v2(case, logits, bias, weights, zero_rows, input_ids, tid2eid)
    return case


def _verify_v2(case, logits, bias, weights, zero_rows, input_ids, tid2eid):
    """Zero rows exactly 0, the rest informative, and the float32 model (fairness)."""
    ids = case.tensors["out.topk_ids"]
    live = np.ones(ids.shape[0], dtype=bool)
    live[list(zero_rows)] = False
    if not np.all(weights[~live] == 0):
        raise CaseError(f"{case.path}: an all-zero-score row has non-zero weights")
    check_not_degenerate(f"{case.path} out.topk_weights", weights, meaningful=np.broadcast_to(live[:, None], weights.shape), rms_range=(0.01, 20.0))
    if any(len(set(row)) != len(row) for row in ids.tolist()):
        raise CaseError(f"{case.path}: a row repeats an expert id")
    if input_ids is None:
        if ids.shape[0] > 1 and len(np.unique(ids)) <= ids.shape[1]:
            raise CaseError(f"{case.path} out.topk_ids: every token picks the same experts")
        got_ids, got_w = lowp.moe_route(logits, bias, case.params)
    else:
        got_ids, got_w = lowp.moe_route_hash(logits, case.params, input_ids, tid2eid)
    record_fairness(case, [fair_keyed(case, "topk_ids", "topk_weights", got_ids, got_w, ids, weights)])
