#!/usr/bin/env python3
"""numpy peer for `moemla bench --peer numpy`.

Runs the same ops on the same inputs as the Rust benchmark: each argument is a case file in
the golden-file layout (tensors `in.<arg>`, metadata `op` and `params` as JSON). Inputs are
converted to float32 once, outside the timed region, as a numpy user would; the op itself is
written the way such a user would write it (vectorised numpy, BLAS matmuls). Prints one JSON
object per case: {"file": ..., "median_s": ...}.
"""
import argparse
import json
import struct
import sys
import time

import ml_dtypes
import numpy as np


# safetensors dtype names -> numpy dtypes (F8_E4M3 through ml_dtypes: safetensors' numpy
# loader has no float8 of its own).
DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I32": np.int32,
    "U8": np.uint8,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
}


def read_file(path):
    """(metadata, {name: array}) of a safetensors file, read directly (every dtype the
    bench writes, FP8 included)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {}) or {}
    arrays = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        arrays[name] = np.frombuffer(data[start:end], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return meta, arrays


def load(path):
    meta, arrays = read_file(path)
    tensors = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
    for name, t in tensors.items():
        # Run-dtype floats to float32 once, as a numpy user would; FP8 codes stay codes
        # (dequantized per expert where they are used).
        if t.dtype in (np.float16, np.float32, ml_dtypes.bfloat16):
            tensors[name] = t.astype(np.float32)
    return meta["op"], json.loads(meta["params"]), tensors


def moe_route(p, logits, bias=None):
    if p["score_func"] == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
    sel = s + bias if bias is not None else s.copy()
    t, n = sel.shape
    if p["n_group"] > 1:
        g = sel.reshape(t, p["n_group"], -1)
        if p["group_select"] == "top2_sum":
            gs = np.sort(g, axis=2)[:, :, -2:].sum(axis=2)
        else:
            gs = g.max(axis=2)
        keep = np.argpartition(-gs, p["topk_group"] - 1, axis=1)[:, : p["topk_group"]]
        mask = np.ones((t, p["n_group"]), dtype=bool)
        np.put_along_axis(mask, keep, False, axis=1)
        sel = np.where(np.repeat(mask, n // p["n_group"], axis=1), -np.inf, sel)
    ids = np.argpartition(-sel, p["top_k"] - 1, axis=1)[:, : p["top_k"]]
    w = np.take_along_axis(s, ids, axis=1)
    if p["renormalize"]:
        w = w / w.sum(axis=1, keepdims=True)
    return ids.astype(np.int32), (w * p["routed_scaling_factor"]).astype(np.float32)


def dequant(codes, scales):
    """FP8 e4m3 codes [R, C] times their 128x128 block scales [ceil(R/128), ceil(C/128)]."""
    r, c = codes.shape
    full = np.repeat(np.repeat(scales, 128, axis=0), 128, axis=1)[:r, :c]
    return codes.astype(np.float32) * full


def quant_rows(v, ue8m0):
    """fp8_block128 activation quantization of each row of v (groups of 128 columns):
    sc = max(amax, 1e-4) / 448 (ue8m0: rounded up to a power of two), v = e4m3(v / sc) * sc."""
    out = np.empty_like(v)
    for g in range(0, v.shape[1], 128):
        blk = v[:, g : g + 128]
        sc = (np.maximum(np.abs(blk).max(axis=1, keepdims=True), np.float32(1e-4)) / np.float32(448)).astype(np.float32)
        if ue8m0:
            sc = np.exp2(np.ceil(np.log2(sc))).astype(np.float32)
        q = (blk / sc).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        out[:, g : g + 128] = q * sc
    return out


def moe_experts(p, x, w13, w2, topk_ids, topk_weights, w13_scale=None, w2_scale=None):
    t, h = x.shape
    inter = w2.shape[2]
    fp8 = w13_scale is not None
    w8a8 = p.get("activation_quant") == "fp8_block128"
    ue8m0 = p.get("activation_scale") == "ue8m0"
    limit = p.get("swiglu_limit")
    if w8a8:
        x = quant_rows(x, ue8m0)
    y = np.zeros((t, h), dtype=np.float32)
    live = (topk_ids >= 0) & (topk_weights != 0)
    for e in np.unique(topk_ids[live]):
        rows, slots = np.nonzero(live & (topk_ids == e))
        a = dequant(w13[e], w13_scale[e]) if fp8 else w13[e]
        b = dequant(w2[e], w2_scale[e]) if fp8 else w2[e]
        hidden = x[rows] @ a.T
        gate, up = hidden[:, :inter], hidden[:, inter:]
        if limit is not None:
            gate = np.minimum(gate, np.float32(limit))
            up = np.clip(up, -np.float32(limit), np.float32(limit))
        act = gate / (1.0 + np.exp(-gate)) * up
        if w8a8:
            act = quant_rows(act.astype(np.float32), ue8m0)
        out = act @ b.T
        np.add.at(y, rows, out * topk_weights[rows, slots][:, None])
    return y


def mla_decode(p, q, kv_cache, block_table, cache_seqlens):
    b, sq, hq, d = q.shape
    _, bs, hkv, _ = kv_cache.shape
    dv = p["head_dim_v"]
    o = np.zeros((b, sq, hq, dv), dtype=np.float32)
    lse = np.full((b, hq, sq), -np.inf, dtype=np.float32)
    group = hq // hkv
    for i in range(b):
        n = int(cache_seqlens[i])
        if n == 0:
            continue
        blocks = block_table[i, : (n + bs - 1) // bs]
        kv = kv_cache[blocks].reshape(-1, hkv, d)[:n]
        for g in range(hkv):
            k = kv[:, g, :]
            qg = q[i, :, g * group : (g + 1) * group, :].reshape(sq * group, d)
            s = (qg @ k.T) * p["softmax_scale"]
            if p["causal"]:
                limit = n - sq + np.arange(sq).repeat(group) + 1
                s = np.where(np.arange(n)[None, :] < limit[:, None], s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            e = np.exp(s - m)
            l = e.sum(axis=1, keepdims=True)
            out = (e @ k[:, :dv]) / np.where(l > 0, l, 1.0)
            o[i, :, g * group : (g + 1) * group, :] = out.reshape(sq, group, dv)
            with np.errstate(divide="ignore"):  # empty causal range: log(0) = -inf
                lse[i, g * group : (g + 1) * group, :] = (np.log(l) + m).reshape(sq, group).T
    return o, lse


def run(op, params, t):
    if op == "moe_route":
        return moe_route(params, t["logits"], t.get("bias"))
    if op == "moe_experts":
        return moe_experts(params, t["x"], t["w13"], t["w2"], t["topk_ids"], t["topk_weights"],
                           t.get("w13_scale"), t.get("w2_scale"))
    if op == "mla_decode":
        return mla_decode(params, t["q"], t["kv_cache"], t["block_table"], t["cache_seqlens"])
    raise SystemExit(f"peer.py: unknown op {op!r}")


def median_time(fn, min_reps, max_reps, target_s):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < target_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=30)
    ap.add_argument("--target-ms", type=float, default=1500)
    a = ap.parse_args()
    for path in a.files:
        op, params, tensors = load(path)
        t = median_time(lambda: run(op, params, tensors), a.min_reps, a.max_reps, a.target_ms / 1e3)
        print(json.dumps({"file": path, "median_s": t}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
