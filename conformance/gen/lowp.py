"""Simulated low-precision recomputation: the "fair backend" every case must satisfy.

A GPU kernel computes in float32 but may round intermediates to the run dtype, as vLLM's
fused_moe stores its intermediate caches and FlashMLA feeds P to its P@V MMA: the gate/up
projections, the SwiGLU activation, each expert's down-projection output before the
weighted combine, the softmax probabilities before P@V, and the output itself. These
functions do exactly that (float32 accumulation, rounding at those points), so the
generator can assert each case passes the contract's tolerance even for such a kernel.

The v2 models (FP8 weights, activation quantization, the FP8 latent cache, sparse attention,
the indexer) go further the way real kernels do: FP8 weights and cache rows dequantized in f32
and rounded to the run dtype (FlashMLA and the official bf16 GEMM path dequantize to bf16),
activations quantized from their run-dtype value with reciprocal multiplies (DeepGEMM, V3.2)
and a frexp-based power of two, e4m3 encoded through ml_dtypes with clipping. They share no
code with fp8.py, so they double as a cross-check of the reference codecs.
"""

import ml_dtypes
import numpy as np

from ops_ref import attention_length, gather_kv, group_scores


def round_to(a, dtype):
    """Round a float32 array to `dtype` (a numpy/ml_dtypes float type) and back to float32."""
    return np.asarray(a, dtype=np.float32).astype(dtype).astype(np.float32)


def _scores_f32(logits, score_func):
    """Routing scores in float32."""
    x = logits.astype(np.float32)
    with np.errstate(over="ignore"):
        if score_func == "sigmoid":
            return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))
        if score_func == "sqrtsoftplus":
            return np.sqrt(np.where(x > np.float32(20.0), x, np.log1p(np.exp(x))))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def moe_route_hash(logits, params, input_ids, tid2eid):
    """Hash routing in float32: ids from the table, weights from the scores."""
    s = _scores_f32(logits, params["score_func"])
    ids = tid2eid[input_ids].astype(np.int32)
    w = np.take_along_axis(s, ids, axis=-1)
    if params["renormalize"]:
        w = w / np.maximum(w.sum(axis=-1, keepdims=True), np.float32(1e-20))
    return ids, w * np.float32(params["routed_scaling_factor"])


def moe_route(logits, bias, params):
    """Routing computed in float32 throughout (as the contract prescribes)."""
    s = _scores_f32(logits, params["score_func"])
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
        w = w / np.maximum(w.sum(axis=-1, keepdims=True), np.float32(1e-20))
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


# ---- contract v2 models -------------------------------------------------------------------


def e4m3_round_trip(v):
    """e4m3(v) decoded, via ml_dtypes after clipping to +-448 (its cast does not saturate)."""
    v = np.clip(np.asarray(v, dtype=np.float32), np.float32(-448.0), np.float32(448.0))
    return v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def pow2_ceil(sc):
    """2^ceil(log2 sc) via frexp (sc = m 2^e, m in [0.5, 1)): exact, independent of fp8.py."""
    m, e = np.frexp(np.asarray(sc, dtype=np.float32))
    return np.ldexp(np.float32(1.0), np.where(m == 0.5, e - 1, e)).astype(np.float32)


def quantize_activation(v, activation_scale, group=128):
    """A DeepGEMM-style activation quantizer: sc = amax * (1/448), v * (1/sc), f32."""
    v = np.asarray(v, dtype=np.float32)
    out = np.empty_like(v)
    for g in range(0, v.shape[-1], group):
        part = v[..., g : g + group]
        amax = np.maximum(np.max(np.abs(part), axis=-1, keepdims=True), np.float32(1e-4))
        sc = amax * (np.float32(1.0) / np.float32(448.0))
        if activation_scale == "ue8m0":
            sc = pow2_ceil(sc)
        out[..., g : g + group] = e4m3_round_trip(part * (np.float32(1.0) / sc)) * sc
    return out


def dequantize_weights(codes, scale, run_dtype, block=128):
    """FP8 block-scaled weights -> float32 products rounded to the run dtype (bf16-path GEMM)."""
    values = np.asarray(codes, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    full = np.repeat(np.repeat(scale.astype(np.float32), block, axis=1), block, axis=2)
    return round_to(values * full[:, : codes.shape[1], : codes.shape[2]], run_dtype)


def moe_experts_v2(x, w13, w2, topk_ids, topk_weights, run_dtype, activation_quant="none", activation_scale="f32", swiglu_limit=None, shared=None):
    """The v1 model with v2's options; w13/w2 already real (dequantized) float32 weights.

    shared: (shared_w13 [S, 2Is, H], shared_w2 [S, H, Is]) run-dtype weights or None; each
    shared expert is computed like a routed one and added with weight 1 after the routed
    slots, before the one final rounding of y.
    """
    x = x.astype(np.float32)
    quant = activation_quant == "fp8_block128"
    y = np.zeros((x.shape[0], x.shape[1]), dtype=np.float32)

    def expert(wg, wd, xt):
        h = round_to(wg.astype(np.float32) @ xt, run_dtype)
        inter = wg.shape[0] // 2
        g, u = h[:inter], h[inter:]
        if swiglu_limit is not None:
            c = np.float32(swiglu_limit)
            g, u = np.minimum(g, c), np.clip(u, -c, c)
        act = round_to(g / (np.float32(1.0) + np.exp(-g)) * u, run_dtype)
        if quant:
            act = quantize_activation(act, activation_scale)
        return round_to(wd.astype(np.float32) @ act, run_dtype)

    for t in range(x.shape[0]):
        xt = quantize_activation(x[t], activation_scale) if quant else x[t]
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if e < 0 or topk_weights[t, j] == 0:
                continue
            y[t] += np.float32(topk_weights[t, j]) * expert(w13[e], w2[e], xt)
        if shared is not None:
            for sw13, sw2 in zip(*shared):
                y[t] += expert(sw13, sw2, xt)
    return round_to(y, run_dtype)


DS_V32_ROW = np.dtype([("codes", "u1", (512,)), ("scales", "<f4", (4,)), ("rope", "<u2", (64,))])


def kv_quantize(kv):
    """mla_kv_quantize in f32 arithmetic (reciprocal multiply, frexp power of two, ml_dtypes)."""
    x = np.asarray(kv, dtype=np.float32)
    tiles = x[:, :512].reshape(x.shape[0], 4, 128)
    amax = np.max(np.abs(tiles), axis=2)
    sc = pow2_ceil(np.maximum(amax * (np.float32(1.0) / np.float32(448.0)), np.float32(1e-4)))
    rows = np.zeros(x.shape[0], dtype=DS_V32_ROW)
    scaled = np.clip(tiles * (np.float32(1.0) / sc)[:, :, None], np.float32(-448.0), np.float32(448.0))
    rows["codes"] = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).reshape(x.shape[0], 512)
    rows["scales"] = sc
    rows["rope"] = x[:, 512:].astype(ml_dtypes.bfloat16).view(np.uint16)
    return rows.view(np.uint8).reshape(x.shape[0], 656)


def dequantize_cache(cache_u8, run_dtype):
    """[..., 656] uint8 -> [..., 576] float32: code * scale in f32 then the run dtype (FlashMLA)."""
    lead = cache_u8.shape[:-1]
    rows = np.ascontiguousarray(cache_u8).reshape(-1, 656).view(DS_V32_ROW).reshape(-1)
    codes = rows["codes"].view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    with np.errstate(invalid="ignore"):
        latent = (codes.reshape(-1, 4, 128) * rows["scales"][:, :, None]).reshape(-1, 512)
    rope = rows["rope"].view(ml_dtypes.bfloat16).astype(np.float32)
    return round_to(np.concatenate([latent, rope], axis=1), run_dtype).reshape(*lead, 576)


def mla_sparse_decode(q, kv_rows, indices, topk_length, attn_sink, params, run_dtype):
    """Sparse flash-style decode: f32 scores, P rounded before P@V, sink in f32, o rounded."""
    b_count, s_q, h_q, _ = q.shape
    d_v = params["head_dim_v"]
    scale = np.float32(params["softmax_scale"])
    o = np.zeros((b_count, s_q, h_q, d_v), dtype=np.float32)
    lse = np.full((b_count, h_q, s_q), -np.inf, dtype=np.float32)
    for b in range(b_count):
        length = indices.shape[2] if topk_length is None else int(topk_length[b])
        for i in range(s_q):
            row = indices[b, i, :length]
            sel = row[row != -1]
            if sel.size == 0:
                continue
            kv = kv_rows[sel].astype(np.float32)
            logits = (q[b, i].astype(np.float32) @ kv.T) * scale
            m = logits.max(axis=1, keepdims=True)
            p = np.exp(logits - m)
            total = p.sum(axis=1, dtype=np.float32)
            o[b, i] = (round_to(p, run_dtype) @ kv[:, :d_v]) / total[:, None]
            lse[b, :, i] = m[:, 0] + np.log(total)
            if attn_sink is not None:
                with np.errstate(over="ignore"):
                    o[b, i] *= (np.float32(1.0) / (np.float32(1.0) + np.exp(attn_sink.astype(np.float32) - lse[b, :, i])))[:, None]
    return round_to(o, run_dtype), lse


def dsa_indexer_topk(q, weights, k_cache, block_table, cache_seqlens, params):
    """Indexer in float32: per-head dots, ReLU, weighted head sum; top-k with -1 padding."""
    b_count, s_q = q.shape[:2]
    top_k = params["top_k"]
    block_size = k_cache.shape[1]
    flat = k_cache.reshape(-1, k_cache.shape[2]).astype(np.float32)
    idx = np.full((b_count, s_q, top_k), -1, dtype=np.int32)
    sc = np.full((b_count, s_q, top_k), -np.inf, dtype=np.float32)
    for b in range(b_count):
        for i in range(s_q):
            length = max(attention_length(int(cache_seqlens[b]), s_q, i, params["causal"]), 0)
            pos = np.arange(length)
            slot = block_table[b, pos // block_size].astype(np.int64) * block_size + pos % block_size
            dots = flat[slot] @ q[b, i].astype(np.float32).T
            score = np.maximum(dots, np.float32(0.0)) @ weights[b, i].astype(np.float32)
            order = np.argsort(-score, kind="stable")[:top_k]
            idx[b, i, : order.size] = slot[order]
            sc[b, i, : order.size] = score[order]
    return idx, sc
