"""Float64 reference implementations of the ops, written from the op contract in docs/ops.md
(v1 and the contract v2 additions).

Every function takes numpy arrays holding the exact stored inputs (already rounded to the
run dtype; FP8 data already decoded exactly by fp8.py) and computes in float64, except where
the contract pins f32 arithmetic (routing's renormalisation floor, activation and KV-cache
quantization scales). Nothing here is shared with the Rust side.
"""

import numpy as np

import fp8

# Contract v2: renormalisation divides by max(sum, 1e-20) (an f32 constant).
RENORM_FLOOR = float(np.float32(1e-20))
# Contract v2: softplus(x) = x above this threshold.
SOFTPLUS_THRESHOLD = 20.0


def scores(logits, score_func):
    """Affinity scores: sigmoid per expert or softmax over the experts of a token."""
    x = logits.astype(np.float64)
    if score_func == "sigmoid":
        with np.errstate(over="ignore"):  # exp(1000) = inf: the score is exactly 0
            return 1.0 / (1.0 + np.exp(-x))
    if score_func == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if score_func == "sqrtsoftplus":
        with np.errstate(over="ignore"):
            softplus = np.where(x > SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(x)))
        return np.sqrt(softplus)
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


def moe_route(logits, bias, params, input_ids=None, tid2eid=None):
    """DeepSeek gating: returns (topk_ids int32 [T,k], topk_weights float64 [T,k]).

    With input_ids/tid2eid (v2 hash routing) ids = tid2eid[input_ids[t]]; no bias, no groups.
    """
    if input_ids is None:
        s, sel = route_selection_scores(logits, bias, params)
        ids = np.argsort(-sel, axis=-1, kind="stable")[:, : params["top_k"]]
    else:
        if bias is not None or (params["n_group"], params["topk_group"], params["group_select"]) != (1, 1, "max"):
            raise ValueError("hash routing takes no bias and n_group/topk_group/group_select 1/1/max")
        s = scores(logits, params["score_func"])
        ids = tid2eid[input_ids]
    weights = np.take_along_axis(s, ids, axis=-1)
    if params["renormalize"]:
        weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), RENORM_FLOOR)
    weights = weights * params["routed_scaling_factor"]
    return ids.astype(np.int32), weights


def silu(x):
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def quantize_activation(v, activation_scale, group=128):
    """Contract v2 fp8_block128: per 128-group of the f32 row v, amax = max(max|v|, 1e-4),
    sc = amax / 448 (f32 division; "ue8m0": 2^ceil(log2 sc) exactly), v^ = e4m3(v / sc) * sc.

    v must already hold f32 values (x's run-dtype values; the activation rounded to f32).
    Returns v^ as float64 (exact).
    """
    v = np.asarray(v, dtype=np.float32)
    sc = activation_scales(v, activation_scale, group)
    return fp8.e4m3_decode(fp8.e4m3_encode(v / sc)) * sc.astype(np.float64)


def activation_scales(v, activation_scale, group=128):
    """The f32 scale of each element's 128-group (same shape as v), per quantize_activation."""
    v = np.asarray(v, dtype=np.float32)
    sc = np.empty_like(v)
    for g in range(0, v.shape[-1], group):
        amax = np.maximum(np.max(np.abs(v[..., g : g + group]), axis=-1, keepdims=True), np.float32(1e-4))
        s = (amax / np.float32(fp8.E4M3_MAX)).astype(np.float32)
        if activation_scale == "ue8m0":
            s = fp8.pow2_ceil_f32(s)
        elif activation_scale != "f32":
            raise ValueError(f"unknown activation_scale {activation_scale!r}")
        sc[..., g : g + group] = s
    return sc


def swiglu(h, inter, swiglu_limit=None):
    """silu(g) * u on h = [g; u], with v2's clamp: silu(min(g, c)) * clamp(u, -c, c)."""
    g, u = h[:inter], h[inter:]
    if swiglu_limit is not None:
        g = np.minimum(g, swiglu_limit)
        u = np.clip(u, -swiglu_limit, swiglu_limit)
    return silu(g) * u


def shared_experts(x, shared_w13, shared_w2, swiglu_limit=None):
    """Dense shared experts: y [T, H] float64, each shared expert s adding
    W2_s @ swiglu(W13_s @ x[t]) to every token with weight 1 (v2's clamp included).
    shared_w13 [S, 2Is, H], shared_w2 [S, H, Is] (Is may differ from the routed I).
    """
    x = x.astype(np.float64)
    sw13 = shared_w13.astype(np.float64)
    sw2 = shared_w2.astype(np.float64)
    inter = sw13.shape[1] // 2
    y = np.zeros((x.shape[0], x.shape[1]), dtype=np.float64)
    for t in range(x.shape[0]):
        for s in range(sw13.shape[0]):
            y[t] += sw2[s] @ swiglu(sw13[s] @ x[t], inter, swiglu_limit)
    return y


def moe_experts(x, w13, w2, topk_ids, topk_weights, activation_quant="none", activation_scale="f32", swiglu_limit=None):
    """Routed-expert SwiGLU FFN combine: y [T, H] float64.

    w13/w2 hold real weights (run dtype, or FP8 already dequantized exactly). v2 options:
    activation_quant "fp8_block128" quantizes x and each activation row (from its f32 value)
    before the GEMM that reads it; swiglu_limit clamps the gate/up values. A slot with id -1
    or weight 0 contributes nothing.
    """
    x = x.astype(np.float64)
    w13 = w13.astype(np.float64)
    w2 = w2.astype(np.float64)
    inter = w13.shape[1] // 2
    t_count, k = topk_ids.shape
    quant = activation_quant == "fp8_block128"
    if not quant and activation_quant != "none":
        raise ValueError(f"unknown activation_quant {activation_quant!r}")
    y = np.zeros((t_count, x.shape[1]), dtype=np.float64)
    for t in range(t_count):
        xt = quantize_activation(x[t], activation_scale) if quant else x[t]
        for j in range(k):
            e = int(topk_ids[t, j])
            if e < 0 or topk_weights[t, j] == 0:
                continue
            h = w13[e] @ xt
            act = swiglu(h, inter, swiglu_limit)
            if quant:
                act = quantize_activation(act.astype(np.float32), activation_scale)
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


def mla_kv_quantize(kv):
    """Contract v2 mla_kv_quantize: kv [N, 576] (finite, run dtype) -> [N, 656] uint8 rows.

    Per 128-dim tile: amax = max|x| (f32); sc = max(amax / 448, 1e-4) (f32); sc = 2^ceil(log2
    sc) from the f32 bits; codes = e4m3(x / sc) (exact division by a power of two). Rope dims:
    bf16 round-to-nearest-even of the input.
    """
    x = np.asarray(kv, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != fp8.LATENT + fp8.ROPE or not np.all(np.isfinite(x)):
        raise ValueError("mla_kv_quantize takes finite [N, 576] input")
    n = x.shape[0]
    codes = np.empty((n, fp8.LATENT), dtype=np.uint8)
    scales = np.empty((n, fp8.LATENT // fp8.TILE), dtype=np.float32)
    for t in range(fp8.LATENT // fp8.TILE):
        tile = x[:, t * fp8.TILE : (t + 1) * fp8.TILE]
        amax = np.max(np.abs(tile), axis=1)
        sc = fp8.pow2_ceil_f32(np.maximum(amax / np.float32(fp8.E4M3_MAX), np.float32(1e-4)))
        scales[:, t] = sc
        codes[:, t * fp8.TILE : (t + 1) * fp8.TILE] = fp8.e4m3_encode(tile / sc[:, None])
    return fp8.pack_ds_v32_rows(codes, scales, fp8.bf16_bits(x[:, fp8.LATENT :]))



def mla_cache_write(kv, slot_mapping, kv_cache, kv_format):
    """Contract v2 mla_cache_write: a copy of kv_cache [num_blocks, block_size, 1, W] with row i
    of kv written at flat slot slot_mapping[i] (block * block_size + offset), in row order (the
    later row wins a slot two rows name); -1 skips the row. Dense: the row as stored (W = Dqk,
    same dtype); "fp8_ds_v32": the row quantized by mla_kv_quantize (W = 656 bytes)."""
    out = np.array(kv_cache, copy=True)
    rows = out.reshape(-1, out.shape[-1])
    for i, slot in enumerate(np.asarray(slot_mapping, dtype=np.int64)):
        if slot == -1:
            continue
        if not 0 <= slot < rows.shape[0]:
            raise ValueError(f"slot_mapping[{i}] = {slot} is outside [0, {rows.shape[0]})")
        if kv_format == "fp8_ds_v32":
            rows[slot] = mla_kv_quantize(kv[i : i + 1])[0]
        else:
            rows[slot] = kv[i]
    return out

def valid_sparse_entries(indices_row, length):
    """The attended multiset of one (b, i) row: entries j < length that are not -1."""
    row = np.asarray(indices_row[:length], dtype=np.int64)
    return row[row != -1]


def mla_sparse_decode(q, kv_rows, indices, topk_length, attn_sink, params):
    """DSA sparse MLA: (o [B,Sq,Hq,Dv], lse [B,Hq,Sq]) float64.

    kv_rows [slots, Dqk]: the cache as flat rows (dense values, or FP8 rows decoded exactly);
    only the rows named by valid entries are read. Duplicated entries attend twice. A sink
    scales o by 1 / (1 + exp(sink - lse)); lse is unchanged. No valid entry: o = 0, lse = -inf.
    """
    b_count, s_q, h_q, _ = q.shape
    topk = indices.shape[2]
    d_v = params["head_dim_v"]
    scale = params["softmax_scale"]
    slots = kv_rows.shape[0]
    o = np.zeros((b_count, s_q, h_q, d_v), dtype=np.float64)
    lse = np.full((b_count, h_q, s_q), -np.inf, dtype=np.float64)
    for b in range(b_count):
        length = topk if topk_length is None else int(topk_length[b])
        for i in range(s_q):
            sel = valid_sparse_entries(indices[b, i], length)
            if sel.size == 0:
                continue
            if sel.min() < 0 or sel.max() >= slots:
                raise ValueError(f"index out of range at batch {b}, query {i}")
            kv = kv_rows[sel].astype(np.float64)
            logits = scale * (q[b, i].astype(np.float64) @ kv.T)  # [Hq, n]
            m = logits.max(axis=1, keepdims=True)
            p = np.exp(logits - m)
            total = p.sum(axis=1)
            o[b, i] = (p @ kv[:, :d_v]) / total[:, None]
            lse[b, :, i] = m[:, 0] + np.log(total)
            if attn_sink is not None:
                with np.errstate(over="ignore"):
                    o[b, i] *= (1.0 / (1.0 + np.exp(attn_sink.astype(np.float64) - lse[b, :, i])))[:, None]
    return o, lse


def indexer_row_scores(q_row, weights_row, k_rows):
    """score(p) = sum_h w[h] * max(0, q[h] . k_p) over the rows k_rows [L, Di] (float64)."""
    dots = k_rows.astype(np.float64) @ q_row.astype(np.float64).T  # [L, Hi]
    return np.maximum(dots, 0.0) @ weights_row.astype(np.float64)


def dsa_indexer_topk(q, weights, k_cache, block_table, cache_seqlens, params):
    """Lightning indexer + top-k: (indices int32 [B,Sq,k], scores float64 [B,Sq,k], rows).

    rows[(b, i)] = all scores of that query (position order), for the generator's tie check.
    Selected slots are sorted by descending score (ties: lower position first); fewer than k
    positions pad with -1 / -inf.
    """
    b_count, s_q = q.shape[:2]
    top_k = params["top_k"]
    block_size = k_cache.shape[1]
    out_idx = np.full((b_count, s_q, top_k), -1, dtype=np.int32)
    out_sc = np.full((b_count, s_q, top_k), -np.inf, dtype=np.float64)
    rows = {}
    for b in range(b_count):
        seqlen = int(cache_seqlens[b])
        for i in range(s_q):
            length = max(attention_length(seqlen, s_q, i, params["causal"]), 0)
            pos = np.arange(length)
            slot = block_table[b, pos // block_size].astype(np.int64) * block_size + pos % block_size
            sc = indexer_row_scores(q[b, i], weights[b, i], k_cache.reshape(-1, k_cache.shape[2])[slot])
            rows[(b, i)] = sc
            order = np.argsort(-sc, kind="stable")[:top_k]
            out_idx[b, i, : order.size] = slot[order]
            out_sc[b, i, : order.size] = sc[order]
    return out_idx, out_sc, rows
