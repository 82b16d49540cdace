"""mla_sparse_decode cases: DSA sparse attention over flat cache slots (dense or FP8 cache)."""

import numpy as np

import fp8
import lowp
import mla
import ops_ref
from case import Case, case_rng
from checks import CaseError, check_not_degenerate, fair_float, record_fairness
from writer import RUN_DTYPES, to_run_dtype

# Entries at j >= topk_length[b]: ignored by contract, so they hold what a kernel must not
# read or reject (plus in-range slots that are poisoned, appended per case).
IGNORED_GARBAGE = (2147480000, -7, -2147483648, -1)


def _indices(rng, b_count, s_q, topk, positions, prefill_ctx):
    """Per (b, i): topk cache positions of batch b (distinct), or for a prefill-like case the
    min(topk, ctx + i + 1) visible positions [0, ctx + i] and -1 for the rest."""
    idx = np.full((b_count, s_q, topk), -1, dtype=np.int64)
    for b in range(b_count):
        for i in range(s_q):
            visible = positions[b] if prefill_ctx is None else min(positions[b], prefill_ctx + i + 1)
            n = min(topk, visible)
            idx[b, i, :n] = rng.choice(visible, size=n, replace=False)
    return idx


def build(
    dtype, name, description, positions, s_q, h_q, topk, d_qk, d_v, softmax_scale, *,
    kv_format="dense", explicit_format=True, block_size=64, prefill_ctx=None, minus_one=0.0,
    duplicates=0.0, topk_length=None, no_valid=(), sink=None, q_std=1.0, kv_std=1.0,
):
    """A sparse-decode case over B = len(positions) sequences.

    positions[b]: the cache positions sequence b owns (laid out in randomly placed blocks);
    its index rows pick among them. minus_one / duplicates: share of entries set to -1 /
    replaced by another valid entry of the same row. topk_length: per-batch valid prefix
    (entries beyond it hold garbage: out-of-range values and poisoned in-range slots).
    no_valid: (b, i) rows whose counted entries are all -1. sink: None, or a list of Hq
    values ("finite" draws N(3, 2^2)). Every slot no counted entry names is NaN (dense) or
    0xFF bytes (FP8).
    """
    rng = case_rng("mla_sparse_decode", dtype, name)
    b_count = len(positions)
    used_blocks = [-(-p // block_size) for p in positions]
    num_blocks = sum(used_blocks) + 1
    physical = rng.permutation(num_blocks)
    slot_of, nxt = [], 0
    for b, p in enumerate(positions):
        blocks = physical[nxt : nxt + used_blocks[b]]
        nxt += used_blocks[b]
        pos = np.arange(p)
        slot_of.append(blocks[pos // block_size] * block_size + pos % block_size)
    pos_idx = _indices(rng, b_count, s_q, topk, positions, prefill_ctx)
    indices = np.where(pos_idx >= 0, 0, -1)
    for b in range(b_count):
        indices[b] = np.where(pos_idx[b] >= 0, slot_of[b][np.maximum(pos_idx[b], 0)], -1)
    if minus_one:
        indices[rng.uniform(size=indices.shape) < minus_one] = -1
    if duplicates:
        for b in range(b_count):
            for i in range(s_q):
                row = indices[b, i]
                valid = np.flatnonzero(row >= 0)
                if valid.size < 2:
                    continue
                for j in valid[rng.uniform(size=valid.size) < duplicates]:
                    row[j] = row[rng.choice(valid)]
    lengths = None if topk_length is None else np.asarray(topk_length, dtype=np.int32)
    for b, i in no_valid:
        end = topk if lengths is None else lengths[b]
        indices[b, i, :end] = -1
    total_slots = num_blocks * block_size
    live = np.zeros(total_slots, dtype=bool)
    for b in range(b_count):
        end = topk if lengths is None else lengths[b]
        counted = indices[b, :, :end]
        live[counted[counted >= 0]] = True
    if lengths is not None:
        poisoned = np.flatnonzero(~live)
        garbage = np.array(list(IGNORED_GARBAGE) + list(rng.choice(poisoned, size=4)), dtype=np.int64)
        for b in range(b_count):
            tail = indices[b, :, lengths[b] :]
            tail[...] = rng.choice(garbage, size=tail.shape)
    values = rng.standard_normal((total_slots, d_qk)) * kv_std
    values[~live] = np.nan
    fp8_cache = kv_format == mla.FP8_FORMAT
    if fp8_cache:
        cache = mla.fp8_rows(rng, values, live).reshape(num_blocks, block_size, 1, fp8.ROW_BYTES)
        rows = fp8.unpack_ds_v32_rows(cache).reshape(total_slots, d_qk)
        model_rows = lowp.dequantize_cache(cache, RUN_DTYPES[dtype]).reshape(total_slots, d_qk)
    else:
        cache = to_run_dtype(values, dtype).reshape(num_blocks, block_size, 1, d_qk)
        rows = model_rows = cache.reshape(total_slots, d_qk)
    q = to_run_dtype(rng.standard_normal((b_count, s_q, h_q, d_qk)) * q_std, dtype)
    attn_sink = None
    if sink is not None:
        attn_sink = np.array([rng.normal(3.0, 2.0) if s == "finite" else s for s in sink], dtype=np.float32)
    params = {"softmax_scale": softmax_scale, "head_dim_v": d_v}
    if explicit_format or fp8_cache:
        params["kv_format"] = kv_format
    indices = indices.astype(np.int32)
    o, lse = ops_ref.mla_sparse_decode(q, rows, indices, lengths, attn_sink, params)
    tensors = {"in.q": q, "in.kv_cache": cache, "in.indices": indices}
    if lengths is not None:
        tensors["in.topk_length"] = lengths
    if attn_sink is not None:
        tensors["in.attn_sink"] = attn_sink
    tensors["out.o"] = o.astype(np.float32)
    tensors["out.lse"] = lse.astype(np.float32)
    case = Case("mla_sparse_decode", dtype, name, description, params, tensors)
    if fp8_cache:
        mla.check_fp8_rows(case.path, cache, live)
    _verify(case, o, lse, lengths, attn_sink, no_valid, duplicates, minus_one)
    got_o, got_lse = lowp.mla_sparse_decode(q, model_rows, indices, lengths, attn_sink, params, RUN_DTYPES[dtype])
    record_fairness(case, [fair_float(case, "o", got_o, o), fair_float(case, "lse", got_lse, lse)])
    return case


def _verify(case, o, lse, lengths, attn_sink, no_valid, duplicates, minus_one):
    """Rows without a valid entry exact; the rest informative; the features are present."""
    indices = case.tensors["in.indices"]
    b_count, s_q, topk = indices.shape
    has = np.zeros((b_count, s_q), dtype=bool)
    saw_duplicate = False
    for b in range(b_count):
        end = topk if lengths is None else lengths[b]
        for i in range(s_q):
            sel = ops_ref.valid_sparse_entries(indices[b, i], end)
            has[b, i] = sel.size > 0
            saw_duplicate |= len(set(sel.tolist())) < sel.size
        if lengths is not None and end < topk and np.all((indices[b, :, end:] >= 0) & (indices[b, :, end:] < case.tensors["in.kv_cache"].shape[0] * case.tensors["in.kv_cache"].shape[1])):
            raise CaseError(f"{case.path}: batch {b}'s ignored entries hold no out-of-range value")
    if duplicates and not saw_duplicate:
        raise CaseError(f"{case.path}: no row attends a duplicated index")
    if minus_one and not (indices == -1).any():
        raise CaseError(f"{case.path}: no -1 entry")
    for b, i in no_valid:
        if has[b, i]:
            raise CaseError(f"{case.path}: row ({b}, {i}) should have no valid entry")
    live_o = np.broadcast_to(has[:, :, None, None], o.shape)
    live_lse = np.broadcast_to(has[:, None, :], lse.shape)
    if not (np.all(o[~live_o] == 0) and np.all(lse[~live_lse] == -np.inf)):
        raise CaseError(f"{case.path}: a row without valid entries is not o = 0, lse = -inf")
    if not has.any():
        raise CaseError(f"{case.path}: no row has a valid entry")
    heads = np.ones(o.shape[2], dtype=bool) if attn_sink is None else attn_sink != np.inf
    check_not_degenerate(f"{case.path} out.o", o, meaningful=live_o & heads[None, None, :, None])
    check_not_degenerate(f"{case.path} out.lse", lse, meaningful=live_lse, rms_range=(0.02, 100.0))
    if attn_sink is not None and np.isposinf(attn_sink).any():
        if not np.all(o[:, :, np.isposinf(attn_sink)] == 0):
            raise CaseError(f"{case.path}: a +inf sink must zero its head")
