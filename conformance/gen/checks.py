"""Checks every case must pass before it is written: no near-ties in routing, outputs that
prove something (not degenerate), and tolerances a low-precision kernel can meet."""

import numpy as np

from ops_ref import group_scores

# Contract defaults: run dtype name -> (atol, rtol).
DEFAULT_TOLERANCE = {"f32": (1e-4, 1e-4), "f16": (2e-3, 2e-3), "bf16": (2e-2, 2e-2)}

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
