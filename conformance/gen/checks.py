"""Checks every case must pass before it is written: no near-ties in routing or top-k, outputs
that prove something (not degenerate), and tolerances a low-precision kernel can meet (the
fairness self-check: `fair_*` compare a lowp.py model's outputs with the expected ones the way
the contract's runner does, and `record_fairness` marks the case as checked)."""

import numpy as np

from ops_ref import group_scores

# Contract defaults: run dtype name -> (atol, rtol).
DEFAULT_TOLERANCE = {"f32": (1e-4, 1e-4), "f16": (2e-3, 2e-3), "bf16": (2e-2, 2e-2)}
# Contract v2: default tolerance of moe_experts with activation_quant = "fp8_block128".
FP8_ACTIVATION_TOLERANCE = (5e-2, 5e-2)

# Relative gap required between the last selected and first rejected score (expert or group).
ROUTE_MARGIN = 1e-3


class CaseError(Exception):
    """A case the generator refuses to write."""


def relative_gap(sorted_desc, n):
    """Relative gap between the n-th and (n+1)-th of a descending row (inf if no (n+1)-th)."""
    if n >= sorted_desc.shape[0] or not np.isfinite(sorted_desc[n]):
        return np.inf
    a, b = sorted_desc[n - 1], sorted_desc[n]
    return (a - b) / max(abs(a), abs(b), 1e-30)


def route_row_margin(sel_masked, sel_unmasked, params):
    """Smallest relative selection gap of one token (groups and experts), float64 inputs."""
    gap = np.inf
    n_group = params["n_group"]
    if n_group > 1:
        gs = group_scores(sel_unmasked[None, :], n_group, params["group_select"])[0]
        gap = relative_gap(-np.sort(-gs), params["topk_group"])
    kept = -np.sort(-sel_masked)
    gap = min(gap, relative_gap(kept, params["top_k"]))
    return gap


def within_tolerance(got, exp, atol, rtol):
    """Contract comparison: |got - exp| <= atol + rtol*|exp|; NaN fails; equal infs pass."""
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(exp, dtype=np.float64)
    fin = np.isfinite(exp)
    with np.errstate(invalid="ignore"):
        close = np.abs(got - exp) <= atol + rtol * np.abs(exp)
    ok = np.where(fin, close, got == exp)
    return bool(np.all(ok))


def worst_violation(got, exp, atol, rtol):
    """Largest |got-exp| / (atol + rtol*|exp|) over finite expected entries (for messages)."""
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(exp, dtype=np.float64)
    fin = np.isfinite(exp)
    if not fin.any():
        return 0.0
    ratio = np.abs(got[fin] - exp[fin]) / (atol + rtol * np.abs(exp[fin]))
    return float(np.nanmax(ratio)) if ratio.size else 0.0


def check_not_degenerate(name, values, meaningful=None, rms_range=(0.02, 20.0)):
    """Refuse an output that proves nothing: all zero, constant, non-finite, or badly scaled.

    `meaningful` masks the entries that must be finite and informative (e.g. the rows of an
    attention output whose range is not empty); the rest are checked by the caller.
    """
    v = np.asarray(values, dtype=np.float64)
    if meaningful is not None:
        v = v[meaningful]
    if v.size == 0:
        raise CaseError(f"{name}: no meaningful output elements")
    if not np.all(np.isfinite(v)):
        bad = int(np.sum(~np.isfinite(v)))
        raise CaseError(f"{name}: {bad} of {v.size} meaningful outputs are not finite")
    if np.all(v == 0):
        raise CaseError(f"{name}: output is all zeros")
    if np.all(v == v.flat[0]) and v.size > 1:
        raise CaseError(f"{name}: output is constant ({v.flat[0]})")
    if v.size >= 8 and np.mean(v == 0) > 0.5:
        raise CaseError(f"{name}: more than half of the meaningful outputs are zero")
    rms = float(np.sqrt(np.mean(v * v)))
    if not rms_range[0] <= rms <= rms_range[1]:
        raise CaseError(f"{name}: rms {rms:.3g} outside {rms_range}: rescale the inputs")


def default_tolerance(case):
    """(atol, rtol) the contract gives a float output of this case when no override is set."""
    if case.op == "moe_experts" and case.params.get("activation_quant") == "fp8_block128":
        return FP8_ACTIVATION_TOLERANCE
    return DEFAULT_TOLERANCE[case.dtype]


def output_tolerance(case, out):
    """(atol, rtol) for output `out` (name without "out."): the case's override or the default."""
    if case.tolerance and out in case.tolerance:
        tol = case.tolerance[out]
        return tol["atol"], tol["rtol"]
    return default_tolerance(case)


def fair_float(case, out, got, exp):
    """Elementwise contract comparison of a simulated backend's float output; returns the
    worst error as a fraction of the tolerance, raises CaseError beyond it."""
    atol, rtol = output_tolerance(case, out)
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(exp, dtype=np.float64)
    if got.shape != exp.shape:
        raise CaseError(f"{case.path}: model out.{out} has shape {got.shape}, expected {exp.shape}")
    if not within_tolerance(got, exp, atol, rtol):
        ratio = worst_violation(got, exp, atol, rtol)
        raise CaseError(f"{case.path}: low-precision kernel model out.{out} off by {ratio:.2f}x the tolerance (or a non-finite mismatch)")
    return worst_violation(got, exp, atol, rtol)


def fair_bytes(case, out, got, exp):
    """U8 outputs compare byte for byte; report the first differing byte."""
    got = np.ascontiguousarray(got, dtype=np.uint8).reshape(-1)
    exp = np.ascontiguousarray(exp, dtype=np.uint8).reshape(-1)
    if got.shape != exp.shape:
        raise CaseError(f"{case.path}: model out.{out} has {got.size} bytes, expected {exp.size}")
    diff = np.flatnonzero(got != exp)
    if diff.size:
        i = int(diff[0])
        raise CaseError(f"{case.path}: model out.{out} differs at byte {i}: got {got[i]:#04x}, expected {exp[i]:#04x} ({diff.size} bytes differ)")
    return 0.0


def fair_keyed(case, ids_out, val_out, got_ids, got_vals, exp_ids, exp_vals):
    """Per row, ids compared as (multi)sets and values matched by id (moe_route's ids and
    weights, dsa_indexer_topk's indices and scores; -1 padding matches -1 padding)."""
    exp_ids = np.asarray(exp_ids).reshape(-1, exp_ids.shape[-1])
    got_ids = np.asarray(got_ids).reshape(exp_ids.shape)
    exp_vals = np.asarray(exp_vals, dtype=np.float64).reshape(exp_ids.shape)
    got_vals = np.asarray(got_vals, dtype=np.float64).reshape(exp_ids.shape)
    eo = np.argsort(exp_ids, axis=1, kind="stable")
    go = np.argsort(got_ids, axis=1, kind="stable")
    e_ids, g_ids = np.take_along_axis(exp_ids, eo, 1), np.take_along_axis(got_ids, go, 1)
    bad = np.flatnonzero((e_ids != g_ids).any(axis=1))
    if bad.size:
        raise CaseError(f"{case.path}: model out.{ids_out} picks another set in row {int(bad[0])}")
    return fair_float(case, val_out, np.take_along_axis(got_vals, go, 1), np.take_along_axis(exp_vals, eo, 1))


def record_fairness(case, ratios):
    """Mark the case as fairness-checked with its worst ratio (generate.py refuses unchecked cases)."""
    case.check_ratio = float(max(ratios))
    if not case.check_ratio < 1.0:
        raise CaseError(f"{case.path}: fairness ratio {case.check_ratio:.3f} is not below 1")
    return case.check_ratio
