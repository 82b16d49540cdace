"""Simulated low-precision recomputation, used only to sanity-check value scales.

A GPU kernel computes in float32 but may round intermediates to the run dtype, as vLLM's
fused_moe stores its intermediate caches and FlashMLA feeds P to its P@V MMA: the gate/up
projections, the SwiGLU activation, each expert's down-projection output before the
weighted combine, the softmax probabilities before P@V, and the output itself. These
functions do exactly that (float32 accumulation, rounding at those points), so the
generator can assert each case passes the contract's tolerance even for such a kernel.
"""

import numpy as np

from ops_ref import attention_length, gather_kv, group_scores


def round_to(a, dtype):
    """Round a float32 array to `dtype` (a numpy/ml_dtypes float type) and back to float32."""
    return np.asarray(a, dtype=np.float32).astype(dtype).astype(np.float32)


def moe_route(logits, bias, params):
    """Routing computed in float32 throughout (as the contract prescribes)."""
    x = logits.astype(np.float32)
    if params["score_func"] == "sigmoid":
        s = np.float32(1.0) / (np.float32(1.0) + np.exp(-x))
    else:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
    sel = s + (np.float32(0.0) if bias is None else bias.astype(np.float32))
    n_group = params["n_group"]
    if n_group > 1:
        gs = group_scores(sel, n_group, params["group_select"])
        keep = np.argsort(-gs, axis=-1, kind="stable")[:, : params["topk_group"]]
        mask = np.zeros_like(gs, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        sel = np.where(np.repeat(mask, sel.shape[1] // n_group, axis=-1), sel, -np.inf)
    ids = np.argsort(-sel, axis=-1, kind="stable")[:, : params["top_k"]]
    w = np.take_along_axis(s, ids, axis=-1)
    if params["renormalize"]:
        w = w / w.sum(axis=-1, keepdims=True)
    return ids.astype(np.int32), w * np.float32(params["routed_scaling_factor"])


def moe_experts(x, w13, w2, topk_ids, topk_weights, run_dtype):
    """Expert FFN with float32 GEMMs and run-dtype rounding of every intermediate and y."""
    x = x.astype(np.float32)
    inter = w13.shape[1] // 2
    y = np.zeros((x.shape[0], x.shape[1]), dtype=np.float32)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if e < 0:
                continue
            h = round_to(w13[e].astype(np.float32) @ x[t], run_dtype)
            g = h[:inter]
            act = round_to(g / (np.float32(1.0) + np.exp(-g)) * h[inter:], run_dtype)
            down = round_to(w2[e].astype(np.float32) @ act, run_dtype)
            y[t] += np.float32(topk_weights[t, j]) * down
    return round_to(y, run_dtype)


def mla_decode(q, kv_cache, block_table, cache_seqlens, params, run_dtype):
    """Flash-style decode: float32 scores, probabilities rounded before P@V, o rounded."""
    b_count, s_q, h_q, _ = q.shape
    h_kv = kv_cache.shape[2]
    d_v = params["head_dim_v"]
    scale = np.float32(params["softmax_scale"])
    o = np.zeros((b_count, s_q, h_q, d_v), dtype=np.float32)
    lse = np.full((b_count, h_q, s_q), -np.inf, dtype=np.float32)
    for b in range(b_count):
        seqlen = int(cache_seqlens[b])
        kv = gather_kv(kv_cache, block_table[b], seqlen).astype(np.float32)
        for i in range(s_q):
            length = attention_length(seqlen, s_q, i, params["causal"])
            if length <= 0:
                continue
            for h in range(h_q):
                kvh = kv[:length, h // (h_q // h_kv)]
                logits = (kvh @ q[b, i, h].astype(np.float32)) * scale
                m = logits.max()
                p = np.exp(logits - m)
                total = p.sum(dtype=np.float32)
                o[b, i, h] = (round_to(p, run_dtype) @ kvh[:, :d_v]) / total
                lse[b, h, i] = m + np.log(total)
    return round_to(o, run_dtype), lse
