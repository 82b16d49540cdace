"""mla_cache_write cases: rows written into a paged cache in place. A case holds the cache
before (in.kv_cache) and after (out.kv_cache); the after-cache is compared byte for byte."""

import numpy as np

import lowp
import ops_ref
from case import Case, case_rng
from checks import CaseError, fair_bytes, record_fairness
from writer import to_run_dtype

FP8 = "fp8_ds_v32"


def build(dtype, name, description, kv_format, num_blocks, block_size, d_qk, slots):
    """Rows [N, Dqk] (N = len(slots)) into a cache of num_blocks x block_size slots.

    The cache before holds random data (finite run-dtype values, or random bytes for FP8),
    so slots no row names must keep their bytes. Skipped rows (slot -1) hold NaN and inf:
    they are never read (with FP8 a written non-finite row would be an error).
    """
    rng = case_rng("mla_cache_write", dtype, name)
    slots = np.asarray(slots, dtype=np.int32)
    n = len(slots)
    fp8 = kv_format == FP8
    if fp8:
        mags = 10.0 ** rng.uniform(-3, 3, size=(n, 5))
        vals = rng.standard_t(3, size=(n, d_qk)) * np.repeat(mags, [128, 128, 128, 128, 64], axis=1)
        kv = to_run_dtype(vals, dtype)
        cache = rng.randint(0, 256, size=(num_blocks, block_size, 1, 656)).astype(np.uint8)
    else:
        kv = to_run_dtype(rng.standard_normal((n, d_qk)) * 2.0, dtype)
        cache = to_run_dtype(rng.uniform(-8.0, 8.0, size=(num_blocks, block_size, 1, d_qk)), dtype)
    skipped = np.flatnonzero(slots == -1)
    if skipped.size:
        kv[skipped[0], 1] = np.nan
        kv[skipped[-1], d_qk - 1] = np.inf
    written = slots != -1
    if not np.all(np.isfinite(kv[written].astype(np.float32))):
        raise CaseError(f"mla_cache_write/{dtype}/{name}: a written row overflowed the run dtype")
    after = ops_ref.mla_cache_write(kv, slots, cache, kv_format)
    params = {"kv_format": kv_format}
    tensors = {"in.kv": kv, "in.slot_mapping": slots, "in.kv_cache": cache, "out.kv_cache": after}
    case = Case("mla_cache_write", dtype, name, description, params, tensors)
    _verify(case, kv, slots, cache, after, block_size, fp8)
    return case


def _bytes(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)


def _verify(case, kv, slots, before, after, block_size, fp8):
    """The case exercises what it claims, and a second model (last occurrence by np.unique,
    FP8 rows from lowp's f32 quantizer) matches byte for byte."""
    nslots = before.shape[0] * before.shape[1]
    used = slots[slots != -1]
    values, counts = np.unique(used, return_counts=True)
    dup_rows_differ = False
    for s in values[counts > 1]:
        rows = np.flatnonzero(slots == s)
        dup_rows_differ |= bool((_bytes(kv[rows[0]]) != _bytes(kv[rows[-1]])).any())
    blocks_hit = np.unique(values // block_size)
    partial = any(0 < np.isin(np.arange(b * block_size, (b + 1) * block_size), values).sum() < block_size for b in blocks_hit)
    want = {
        "a skipped row (-1)": bool((slots == -1).any()),
        "a slot two rows name, with different rows": dup_rows_differ,
        "a partially written block": partial,
        "untouched slots": len(values) < nslots,
        "slot 0 and the last slot": bool(0 in values and nslots - 1 in values),
    }
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise CaseError(f"{case.path}: case lacks {', '.join(missing)}")
    # Second model: the winner of each slot is its last row.
    rev = slots[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)
    keep = uniq != -1
    winners = (len(slots) - 1 - first_in_rev)[keep]
    model = np.array(before, copy=True).reshape(nslots, -1)
    rows = lowp.kv_quantize(kv[winners]) if fp8 else kv[winners]
    model[uniq[keep]] = rows
    ratio = fair_bytes(case, "kv_cache", _bytes(model), _bytes(after))
    # A backend that lets the first row win, or writes nothing, fails the case.
    first = ops_ref.mla_cache_write(kv[::-1], slots[::-1], before, case.params["kv_format"])
    if np.array_equal(_bytes(first), _bytes(after)) or np.array_equal(_bytes(before), _bytes(after)):
        raise CaseError(f"{case.path}: the after-cache does not tell the contract from a wrong write")
    record_fairness(case, [ratio])
