"""moe_experts cases: routed SwiGLU experts with edge-case routings."""

import ml_dtypes
import numpy as np

import fp8
import lowp
import ops_ref
from case import Case, case_rng
from checks import (
    DEFAULT_TOLERANCE,
    CaseError,
    check_not_degenerate,
    default_tolerance,
    fair_float,
    record_fairness,
    within_tolerance,
    worst_violation,
)
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


# ---- contract v2: FP8 block-scaled weights, activation quantization, swiglu_limit ----------

# Share of FP8 weight codes replaced by 0x80 (-0.0): a naive e4m3fnuz reading makes them NaN.
NEG_ZERO_SHARE = 0.01

# F32 w8a8 cases get a tolerance tighter than the contract's 5e-2 default (which a backend
# that skips activation quantization passes), proven fair by a flip budget. An f32 backend's
# activation a may differ from the reference's f32(a) by rounding: up to FLIP_REACH in units
# of its group's scale (2^-18 of the group's amax, twice over; a 200-term f32 dot product is
# ~20x better). Every code within that reach of its rounding midpoint is assumed to flip; the
# sum of those changes through W2 is the token's budget. x is exact, so its codes can move
# only under v * (1/sc) (relative 2^-23). A token is redrawn while its budget exceeds
# BUDGET_CAP of the tolerance, an x code lies within 2^-20 of a midpoint, or (ue8m0) a group's
# amax / 448 lies within 2^-16 of a power of two. Model error + budget must stay within half.
FLIP_REACH = 4e-3
X_FLIP_REACH_REL = 2.0**-20
POW2_GUARD_REL = 2.0**-16
F32_W8A8_TOLERANCE = 1e-3
BUDGET_CAP = 0.25
MAX_X_REDRAWS = 200
# Without the clamp, the result must miss the case's (default) tolerance by this factor.
SWIGLU_BITE = 5.0


def _e4m3_quantum(m):
    """e4m3 code spacing at magnitude m (>= 0, below 448): 2^-9 subnormal, else 2^(e-3)."""
    m = np.asarray(m, dtype=np.float64)
    e = np.floor(np.log2(np.maximum(m, 2.0**-6)))
    return np.where(m < 2.0**-6, 2.0**-9, 2.0 ** (e - 3))


def _midpoint_distance(u):
    """(distance of |u| from the rounding midpoint on its side, the code step across it)."""
    a = np.abs(np.asarray(u, dtype=np.float64))
    d = np.abs(fp8.e4m3_decode(fp8.e4m3_encode(np.asarray(u, dtype=np.float32))))
    up = a >= d
    step = np.where(up, _e4m3_quantum(d), _e4m3_quantum(d * (1 - 2.0**-6)))
    dist = np.abs(a - np.where(up, d + step / 2, d - step / 2))
    return np.where(up & (d >= fp8.E4M3_MAX), np.inf, dist), step


def _near_pow2(v, group=128):
    """Per group of v: is amax / 448 (f32) within POW2_GUARD_REL of a power of two?"""
    v = np.asarray(v, dtype=np.float32)
    out = []
    for g in range(0, v.shape[-1], group):
        pre = np.float64(max(np.max(np.abs(v[g : g + group])), np.float32(1e-4)) / np.float32(fp8.E4M3_MAX))
        out.append(abs(pre / 2.0 ** np.round(np.log2(pre)) - 1) <= POW2_GUARD_REL)
    return any(out)


def _token_flip_budget(xt, w13, w2, ids_t, weights_t, options):
    """(budget [H], fragile) of one token for an f32 w8a8 case (see FLIP_REACH)."""
    mode = options["activation_scale"]
    xt = np.asarray(xt, dtype=np.float32)
    u = xt / ops_ref.activation_scales(xt, mode)
    dist, _ = _midpoint_distance(u)
    fragile = bool(np.any(dist <= X_FLIP_REACH_REL * np.abs(u))) or (mode == "ue8m0" and _near_pow2(xt))
    xq = ops_ref.quantize_activation(xt, mode)
    inter = w13.shape[1] // 2
    budget = np.zeros(w2.shape[1])
    for e, wt in zip(ids_t, weights_t):
        if e < 0 or wt == 0:
            continue
        a = ops_ref.swiglu(w13[e] @ xq, inter, options["swiglu_limit"]).astype(np.float32)
        sc = ops_ref.activation_scales(a, mode)
        dist, step = _midpoint_distance(a / sc)
        near = dist <= FLIP_REACH
        fragile |= mode == "ue8m0" and _near_pow2(a)
        budget += abs(float(wt)) * (np.abs(w2[e][:, near]) @ (step[near] * sc[near].astype(np.float64)))
    return budget, fragile


def _fp8_weights(rng, real, scale_format="f32"):
    """Block-quantize real weights [E, R, C] (scales as scale_format: "f32" or "ue8m0");
    sprinkle -0.0 codes (never over a +-448 code). With "ue8m0" each 128x128 block is first
    multiplied by its own power of two (2^-2 to 1), so the scales differ from block to
    block as a checkpoint's do."""
    if scale_format == "ue8m0":
        e, r, c = real.shape
        gain = 2.0 ** rng.randint(-2, 1, size=(e, -(-r // 128), -(-c // 128)))
        real = real * np.repeat(np.repeat(gain, 128, axis=1), 128, axis=2)[:, :r, :c]
    codes, scale = fp8.block_quantize(real, scale_format=scale_format)
    pick = (rng.uniform(size=codes.shape) < NEG_ZERO_SHARE) & ~np.isin(codes, [fp8.CODE_POS_MAX, fp8.CODE_NEG_MAX])
    codes[pick] = fp8.CODE_NEG_ZERO
    return codes, scale


def build_v2(dtype, name, description, tokens, hidden, inter, experts, top_k, params, fp8_weights=True, x_std=1.0, w2_gain=1.0, unused=None, hot=None, empty_slots=(), zero_weight_slots=(), weight_scales="f32"):
    """A v2 experts case: FP8 weights (default) or run-dtype ones, with the given params.

    x ~ N(0, x_std^2) in the run dtype; real weights W13 ~ N(0, 1/H), W2 ~ N(0, (w2_gain 0.5)^2
    / I), block-quantized to e4m3 with f32 scales (amax / 448: generally not powers of two,
    every block holding a +-448 code; weight_scales "ue8m0": rounded up to powers of two, as
    DeepSeek-V3.1's checkpoints, the +-448 codes not required); 1% of the codes are -0.0 (0x80).
    zero_weight_slots: (t, j) slots given weight -0.0 (contract: they contribute nothing).
    """
    if weight_scales not in ("f32", "ue8m0"):
        raise CaseError(f"moe_experts/{dtype}/{name}: weight_scales {weight_scales!r}: f32 or ue8m0")
    rng = case_rng("moe_experts", dtype, name)
    ids, weights = _routing(rng, tokens, experts, top_k, unused, hot, empty_slots)
    for t, j in zero_weight_slots:
        weights[t, j] = -0.0
    x = to_run_dtype(rng.standard_normal((tokens, hidden)) * x_std, dtype)
    w13_real = rng.standard_normal((experts, 2 * inter, hidden)) / np.sqrt(hidden)
    w2_real = rng.standard_normal((experts, hidden, inter)) * (w2_gain * 0.5 / np.sqrt(inter))
    tensors = {"in.x": x}
    if fp8_weights:
        w13_codes, w13_scale = _fp8_weights(rng, w13_real, weight_scales)
        w2_codes, w2_scale = _fp8_weights(rng, w2_real, weight_scales)
        w13, w2 = fp8.block_dequantize(w13_codes, w13_scale), fp8.block_dequantize(w2_codes, w2_scale)
        tensors["in.w13"] = w13_codes.view(ml_dtypes.float8_e4m3fn)
        tensors["in.w13_scale"] = w13_scale
        tensors["in.w2"] = w2_codes.view(ml_dtypes.float8_e4m3fn)
        tensors["in.w2_scale"] = w2_scale
        for what, codes in (("w13", w13_codes), ("w2", w2_codes)):
            required = {fp8.CODE_NEG_ZERO}
            if weight_scales == "f32":
                required |= {fp8.CODE_POS_MAX, fp8.CODE_NEG_MAX}
            missing = required - set(np.unique(codes).tolist())
            if missing or np.isin(codes, [0x7F, 0xFF]).any():
                raise CaseError(f"moe_experts/{dtype}/{name}: {what} lacks codes {sorted(missing)} or holds NaN codes")
    else:
        w13, w2 = to_run_dtype(w13_real, dtype), to_run_dtype(w2_real, dtype)
        tensors["in.w13"], tensors["in.w2"] = w13, w2
    options = _options(params)
    budget = None
    if dtype == "f32" and options["activation_quant"] == "fp8_block128":
        budget = np.zeros(x.shape)
        for t in range(tokens):
            for _ in range(MAX_X_REDRAWS):
                budget[t], fragile = _token_flip_budget(x[t], w13, w2, ids[t], weights[t], options)
                if not fragile and budget[t].max() <= BUDGET_CAP * F32_W8A8_TOLERANCE:
                    break
                x[t] = to_run_dtype(rng.standard_normal(hidden) * x_std, dtype)
            else:
                raise CaseError(f"moe_experts/{dtype}/{name}: token {t} keeps a fragile activation code")
    tensors["in.topk_ids"] = ids
    tensors["in.topk_weights"] = weights
    y = ops_ref.moe_experts(x, w13, w2, ids, weights, **options)
    tensors["out.y"] = y.astype(np.float32)
    case = Case("moe_experts", dtype, name, description, params, tensors)
    _verify_v2(case, y, w13, w2, options, budget)
    return case


def _options(params):
    """Reference keyword arguments from the case params (contract defaults for absent keys)."""
    return {
        "activation_quant": params.get("activation_quant", "none"),
        "activation_scale": params.get("activation_scale", "f32"),
        "swiglu_limit": params.get("swiglu_limit"),
    }


def _verify_v2(case, y, w13, w2, options, budget=None):
    """Informative output, the option actually changes the result, and the fairness model.

    With a flip budget (f32 w8a8) the case gets tolerance F32_W8A8_TOLERANCE, under which model
    error plus budget must stay within half.
    """
    t = case.tensors
    routed = ((t["in.topk_ids"] >= 0) & (t["in.topk_weights"] != 0)).any(axis=1)
    if not np.all(y[~routed] == 0):
        raise CaseError(f"{case.path}: a token with no expert has a non-zero output")
    check_not_degenerate(f"{case.path} out.y", y, meaningful=routed)
    args = (t["in.x"], w13, w2, t["in.topk_ids"], t["in.topk_weights"])
    atol, rtol = default_tolerance(case)
    # The feature under test must matter: without it the result is far outside the tolerance
    # of the run dtype (so a backend ignoring it fails).
    if options["swiglu_limit"] is not None:
        unclamped = ops_ref.moe_experts(*args, **dict(options, swiglu_limit=None))
        if worst_violation(unclamped, y, atol, rtol) < SWIGLU_BITE:
            raise CaseError(f"{case.path}: swiglu_limit {options['swiglu_limit']} does not bite")
    if options["activation_quant"] == "fp8_block128":
        exact = ops_ref.moe_experts(*args, **dict(options, activation_quant="none"))
        case.discrimination = worst_violation(exact, y, atol, rtol)
    if "in.w13_scale" in t:
        w13_m = lowp.dequantize_weights(t["in.w13"].view(np.uint8), t["in.w13_scale"], RUN_DTYPES[case.dtype])
        w2_m = lowp.dequantize_weights(t["in.w2"].view(np.uint8), t["in.w2_scale"], RUN_DTYPES[case.dtype])
    else:
        w13_m, w2_m = w13, w2
    got = lowp.moe_experts_v2(t["in.x"], w13_m, w2_m, t["in.topk_ids"], t["in.topk_weights"], RUN_DTYPES[case.dtype], **options)
    if budget is None:
        record_fairness(case, [fair_float(case, "y", got, y)])
        return
    tol = F32_W8A8_TOLERANCE
    case.tolerance = {"y": {"atol": tol, "rtol": tol}}
    fair_float(case, "y", got, y)
    ratio = float(np.max((np.abs(got.astype(np.float64) - y) + budget) / (tol + tol * np.abs(y))))
    if ratio > 0.5:
        raise CaseError(f"{case.path}: model error + flip budget {ratio:.2f} of the tightened tolerance (> 0.5)")
    record_fairness(case, [ratio])
    exact = ops_ref.moe_experts(*args, **dict(options, activation_quant="none"))
    case.discrimination = worst_violation(exact, y, tol, tol)


# ---- contract v2: dense shared experts fused into the call ----------------------------------

# Leaving out either part (the shared experts, or the routed experts) must miss the case's
# tolerance by at least this factor, so a backend that drops one of them fails.
SHARED_BITE = 5.0


def build_shared(dtype, name, description, tokens, hidden, inter, experts, top_k, shared, shared_inter, params=None, x_std=1.0, w2_gain=1.0, empty_slots=(), no_expert_tokens=()):
    """Run-dtype routed experts plus `shared` dense shared experts of intermediate size
    `shared_inter` (in.shared_w13 [S, 2Is, H], in.shared_w2 [S, H, Is], run dtype), added with
    weight 1 to every token. Weight scales as build_v2's (shared weights like routed ones).
    no_expert_tokens: tokens whose every slot is -1 (their y is the shared experts' alone).
    """
    params = {} if params is None else params
    rng = case_rng("moe_experts", dtype, name)
    ids, weights = _routing(rng, tokens, experts, top_k, None, None, empty_slots)
    for t in no_expert_tokens:
        ids[t, :] = -1
    x = to_run_dtype(rng.standard_normal((tokens, hidden)) * x_std, dtype)
    gain = w2_gain * 0.5
    w13 = to_run_dtype(rng.standard_normal((experts, 2 * inter, hidden)) / np.sqrt(hidden), dtype)
    w2 = to_run_dtype(rng.standard_normal((experts, hidden, inter)) * (gain / np.sqrt(inter)), dtype)
    sw13 = to_run_dtype(rng.standard_normal((shared, 2 * shared_inter, hidden)) / np.sqrt(hidden), dtype)
    sw2 = to_run_dtype(rng.standard_normal((shared, hidden, shared_inter)) * (gain / np.sqrt(shared_inter)), dtype)
    options = _options(params)
    if options["activation_quant"] != "none":
        raise CaseError(f"moe_experts/{dtype}/{name}: shared experts take run-dtype weights (no activation quantization)")
    routed_y = ops_ref.moe_experts(x, w13, w2, ids, weights, **options)
    shared_y = ops_ref.shared_experts(x, sw13, sw2, options["swiglu_limit"])
    y = routed_y + shared_y
    tensors = {
        "in.x": x,
        "in.w13": w13,
        "in.w2": w2,
        "in.topk_ids": ids,
        "in.topk_weights": weights,
        "in.shared_w13": sw13,
        "in.shared_w2": sw2,
        "out.y": y.astype(np.float32),
    }
    case = Case("moe_experts", dtype, name, description, params, tensors)
    _verify_shared(case, y, routed_y, shared_y, options)
    return case


def _verify_shared(case, y, routed_y, shared_y, options):
    """Every token informative; tokens without routed experts get the shared output alone;
    both parts (and the clamp, if any) matter; the fairness model."""
    t = case.tensors
    routed = ((t["in.topk_ids"] >= 0) & (t["in.topk_weights"] != 0)).any(axis=1)
    if not np.array_equal(y[~routed], shared_y[~routed]):
        raise CaseError(f"{case.path}: a token with no expert is not the shared output alone")
    check_not_degenerate(f"{case.path} out.y", y, meaningful=np.ones(len(y), dtype=bool))
    atol, rtol = default_tolerance(case)
    for what, part in (("shared experts", routed_y), ("routed experts", shared_y)):
        if worst_violation(part, y, atol, rtol) < SHARED_BITE:
            raise CaseError(f"{case.path}: leaving out the {what} stays within {SHARED_BITE}x the tolerance")
    if options["swiglu_limit"] is not None:
        args = (t["in.x"], t["in.w13"], t["in.w2"], t["in.topk_ids"], t["in.topk_weights"])
        unclamped = ops_ref.moe_experts(*args) + ops_ref.shared_experts(t["in.x"], t["in.shared_w13"], t["in.shared_w2"])
        if worst_violation(unclamped, y, atol, rtol) < SWIGLU_BITE:
            raise CaseError(f"{case.path}: swiglu_limit {options['swiglu_limit']} does not bite")
        clamp_routed_only = routed_y + ops_ref.shared_experts(t["in.x"], t["in.shared_w13"], t["in.shared_w2"])
        if worst_violation(clamp_routed_only, y, atol, rtol) < SWIGLU_BITE:
            raise CaseError(f"{case.path}: the clamp does not bite on the shared experts")
    shared = (t["in.shared_w13"], t["in.shared_w2"])
    got = lowp.moe_experts_v2(t["in.x"], t["in.w13"], t["in.w2"], t["in.topk_ids"], t["in.topk_weights"], RUN_DTYPES[case.dtype], shared=shared, **options)
    record_fairness(case, [fair_float(case, "y", got, y)])
