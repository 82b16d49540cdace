"""dsa_indexer_topk cases: lightning-indexer scores over a paged cache and their top-k."""

import numpy as np

import lowp
import mla
import ops_ref
from case import Case, case_rng
from checks import ROUTE_MARGIN, CaseError, check_not_degenerate, fair_keyed, record_fairness
from writer import to_run_dtype

MAX_REDRAWS = 500
# The contract computes scores in f32 or better from the stored inputs whatever the run dtype
# (as routing does), so 16-bit cases get the f32 tolerance, like moe_route's weights.
SCORE_TOLERANCE = {"topk_scores": {"atol": 1e-4, "rtol": 1e-4}}
# Besides the contract's relative gap (ROUTE_MARGIN), the k-th and (k+1)-th scores must be
# apart by this share of the row's largest |score|: a relative gap between two near-zero
# scores is no protection against f32 rounding.
ABS_MARGIN = 1e-4


def topk_gap_ok(scores, k):
    """True when the row has <= k scores or a clear gap between its k-th and (k+1)-th."""
    if scores.size <= k:
        return True
    s = -np.sort(-scores)
    a, b = s[k - 1], s[k]
    return (a - b) >= ROUTE_MARGIN * max(abs(a), abs(b)) and (a - b) >= ABS_MARGIN * np.abs(s).max()


def build(dtype, name, description, seqlens, s_q, h_i, d_i, top_k, block_size, causal, extra_blocks=1):
    """An indexer case: q ~ N(0, 1) [B, Sq, Hi, Di], k ~ N(0, 1) in a paged cache with NaN in
    every slot beyond a sequence and in unused blocks, weights ~ N(0, 1) / sqrt(Hi Di) (the
    official 64^-0.5 128^-0.5 folding). A query row whose top-k boundary is a near-tie gets
    its weights redrawn (they only affect that row)."""
    rng = case_rng("dsa_indexer_topk", dtype, name)
    cache, table = mla._paged_cache(rng, seqlens, block_size, 1, d_i, 1.0, extra_blocks)
    k_cache = to_run_dtype(cache[:, :, 0, :], dtype)
    b_count = len(seqlens)
    q = to_run_dtype(rng.standard_normal((b_count, s_q, h_i, d_i)), dtype)
    cache_seqlens = np.asarray(seqlens, dtype=np.int32)
    weights = (rng.standard_normal((b_count, s_q, h_i)) / np.sqrt(h_i * d_i)).astype(np.float32)
    flat = k_cache.reshape(-1, d_i)
    for b in range(b_count):
        for i in range(s_q):
            length = max(ops_ref.attention_length(seqlens[b], s_q, i, causal), 0)
            pos = np.arange(length)
            rows = flat[table[b, pos // block_size].astype(np.int64) * block_size + pos % block_size]
            for _ in range(MAX_REDRAWS):
                if topk_gap_ok(ops_ref.indexer_row_scores(q[b, i], weights[b, i], rows), top_k):
                    break
                weights[b, i] = rng.standard_normal(h_i) / np.sqrt(h_i * d_i)
            else:
                raise CaseError(f"dsa_indexer_topk/{dtype}/{name}: no tie-free weights for row ({b}, {i})")
    params = {"top_k": top_k, "causal": causal}
    idx, scores, all_rows = ops_ref.dsa_indexer_topk(q, weights, k_cache, table, cache_seqlens, params)
    tensors = {
        "in.q": q,
        "in.weights": weights,
        "in.k_cache": k_cache,
        "in.block_table": table,
        "in.cache_seqlens": cache_seqlens,
        "out.topk_indices": idx,
        "out.topk_scores": scores.astype(np.float32),
    }
    case = Case("dsa_indexer_topk", dtype, name, description, params, tensors, SCORE_TOLERANCE)
    _verify(case, idx, scores, all_rows)
    return case


def _verify(case, idx, scores, all_rows):
    """Tie-free boundaries (asserted again), padding exact, informative scores, f32 model."""
    k = case.params["top_k"]
    for (b, i), row in all_rows.items():
        if not topk_gap_ok(row, k):
            raise CaseError(f"{case.path}: near-tie at the top-k boundary of row ({b}, {i})")
        n = min(row.size, k)
        if not (np.all(idx[b, i, n:] == -1) and np.all(scores[b, i, n:] == -np.inf) and np.all(idx[b, i, :n] >= 0)):
            raise CaseError(f"{case.path}: row ({b}, {i}) is not padded exactly")
        if row.size and not np.all(np.diff(scores[b, i, :n]) <= 0):
            raise CaseError(f"{case.path}: row ({b}, {i}) is not sorted descending")
    valid = idx >= 0
    check_not_degenerate(f"{case.path} out.topk_scores", scores, meaningful=valid, rms_range=(0.01, 100.0))
    got_idx, got_sc = lowp.dsa_indexer_topk(case.tensors["in.q"], case.tensors["in.weights"], case.tensors["in.k_cache"], case.tensors["in.block_table"], case.tensors["in.cache_seqlens"], case.params)
    record_fairness(case, [fair_keyed(case, "topk_indices", "topk_scores", got_idx, got_sc, idx, scores)])
