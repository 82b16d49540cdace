"""Float64 reference implementations of the three ops, written from shared/CONTRACT.md.

Every function takes numpy arrays holding the exact stored inputs (already rounded to the
run dtype) and computes in float64. Nothing here is shared with the Rust side.
"""

import numpy as np


def scores(logits, score_func):
    """Affinity scores: sigmoid per expert or softmax over the experts of a token."""
    x = logits.astype(np.float64)
    if score_func == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if score_func == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown score_func {score_func!r}")


def group_scores(sel, n_group, group_select):
    """Per-token group scores [T, n_group] from selection scores [T, E]."""
    t, e = sel.shape
    grouped = sel.reshape(t, n_group, e // n_group)
    if group_select == "max":
        return grouped.max(axis=-1)
    if group_select == "top2_sum":
        top2 = -np.sort(-grouped, axis=-1)[:, :, :2]
        return top2.sum(axis=-1)
    raise ValueError(f"unknown group_select {group_select!r}")


def route_selection_scores(logits, bias, params):
    """(s, masked_sel): unbiased scores and the group-masked selection scores, float64."""
    s = scores(logits, params["score_func"])
    sel = s + (0.0 if bias is None else bias.astype(np.float64))
    n_group = params["n_group"]
    if n_group > 1:
        gs = group_scores(sel, n_group, params["group_select"])
        keep = np.argsort(-gs, axis=-1, kind="stable")[:, : params["topk_group"]]
        group_mask = np.zeros_like(gs, dtype=bool)
        np.put_along_axis(group_mask, keep, True, axis=-1)
        expert_mask = np.repeat(group_mask, sel.shape[1] // n_group, axis=-1)
        sel = np.where(expert_mask, sel, -np.inf)
    return s, sel


def moe_route(logits, bias, params):
    """DeepSeek gating: returns (topk_ids int32 [T,k], topk_weights float64 [T,k])."""
    s, sel = route_selection_scores(logits, bias, params)
    ids = np.argsort(-sel, axis=-1, kind="stable")[:, : params["top_k"]]
    weights = np.take_along_axis(s, ids, axis=-1)
    if params["renormalize"]:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    weights = weights * params["routed_scaling_factor"]
    return ids.astype(np.int32), weights


def silu(x):
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def moe_experts(x, w13, w2, topk_ids, topk_weights):
    """Routed-expert SwiGLU FFN combine: y [T, H] float64."""
    x = x.astype(np.float64)
    w13 = w13.astype(np.float64)
    w2 = w2.astype(np.float64)
    inter = w13.shape[1] // 2
    t_count, k = topk_ids.shape
    y = np.zeros((t_count, x.shape[1]), dtype=np.float64)
    for t in range(t_count):
        for j in range(k):
            e = int(topk_ids[t, j])
            if e < 0:
                continue
            h = w13[e] @ x[t]
            act = silu(h[:inter]) * h[inter:]
            y[t] += float(topk_weights[t, j]) * (w2[e] @ act)
    return y


def attention_length(seqlen, s_q, i, causal):
    """Number of cache positions query i attends to (may be <= 0: empty range)."""
    return seqlen - s_q + i + 1 if causal else seqlen


def gather_kv(kv_cache, block_table_row, length):
    """The first `length` cache rows [length, Hkv, Dqk] of one sequence, via its table."""
    block_size = kv_cache.shape[1]
    pos = np.arange(length)
    blocks = block_table_row[pos // block_size]
    return kv_cache[blocks, pos % block_size]


def mla_decode(q, kv_cache, block_table, cache_seqlens, params):
    """Paged MLA decode: (o [B,Sq,Hq,Dv] float64, lse [B,Hq,Sq] float64)."""
    b_count, s_q, h_q, _ = q.shape
    h_kv = kv_cache.shape[2]
    d_v = params["head_dim_v"]
    scale = params["softmax_scale"]
    o = np.zeros((b_count, s_q, h_q, d_v), dtype=np.float64)
    lse = np.full((b_count, h_q, s_q), -np.inf, dtype=np.float64)
    for b in range(b_count):
        seqlen = int(cache_seqlens[b])
        kv = gather_kv(kv_cache, block_table[b], seqlen).astype(np.float64)
        for i in range(s_q):
            length = attention_length(seqlen, s_q, i, params["causal"])
            if length <= 0:
                continue
            for h in range(h_q):
                kvh = kv[:length, h // (h_q // h_kv)]
                logits = scale * (kvh @ q[b, i, h].astype(np.float64))
                m = logits.max()
                p = np.exp(logits - m)
                total = p.sum()
                o[b, i, h] = (p @ kvh[:, :d_v]) / total
                lse[b, h, i] = m + np.log(total)
    return o, lse
