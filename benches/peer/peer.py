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
import sys
import time

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, "np") as f:
        meta = f.metadata()
        tensors = {k[3:]: f.get_tensor(k) for k in f.keys() if k.startswith("in.")}
    for name, t in tensors.items():
        if t.dtype.kind == "f" or t.dtype == ml_dtypes.bfloat16:
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


def moe_experts(_p, x, w13, w2, topk_ids, topk_weights):
    t, h = x.shape
    inter = w13.shape[1] // 2
    y = np.zeros((t, h), dtype=np.float32)
    for e in np.unique(topk_ids[topk_ids >= 0]):
        rows, slots = np.nonzero(topk_ids == e)
        hidden = x[rows] @ w13[e].T
        gate, up = hidden[:, :inter], hidden[:, inter:]
        act = gate / (1.0 + np.exp(-gate)) * up
        out = act @ w2[e].T
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
        return moe_experts(params, t["x"], t["w13"], t["w2"], t["topk_ids"], t["topk_weights"])
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
