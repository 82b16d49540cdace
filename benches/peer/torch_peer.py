#!/usr/bin/env python3
"""torch peer: the ops as a torch user would write them, on the GPU (the GPU check,
scripts/device-check.sh) or on the CPU (`moemla bench --peer torch`, with --cases).

1. Checks itself first: every mla_decode (dense cache) and moe_experts (run-dtype weights,
   or FP8 w8a16 with block scales; routed experts only) case of the golden directories
   (--golden) runs through the same torch functions that are timed, in the case's run
   dtype, and must match the expected outputs within the contract's tolerance (F32 1e-4,
   F16 2e-3, BF16 2e-2, atol = rtol; a case's own tighter tolerance wins). So torch's
   times below are times of correct implementations.
2. With --cases FILE...: times each case file `moemla bench` wrote (the golden layout:
   `in.<arg>` tensors, `op` and `params` metadata) on --device (cpu for the bench) and
   prints one JSON line per file, {"file": ..., "median_s": ...}, as peer.py does.
3. Otherwise (the GPU check) measures the ceilings on this device: an event-timed device
   copy (bytes read + written) and a cuBLAS bf16 GEMM (8192^3) through torch, then times
   the bench shapes (bf16, random inputs on the device, CUDA events, median):
   - mla_decode over a paged cache, DeepSeek's reference way (model.py, absorbed MLA):
     gather the cache blocks, scores by a batched matmul in the run dtype, softmax in f32,
     probabilities times V in the run dtype (variant `bmm`);
   - moe_experts the Hugging Face / DeepSeek reference way: a Python loop over the experts
     that have tokens, two matmuls and SiLU each, index_add_ (variant `loop`); and sorted by
     expert through torch._grouped_mm where this torch has it (variant `grouped`, bf16).
   With --ours (moemla bench JSON reports), prints our time / torch's best per shape.

FP8 weights are dequantized per active expert to the run dtype (codes times their 128x128
block scales, DeepSeek's weight_dequant), then multiplied as above.

Exit status: 0 fine; 1 the peer disagrees with a golden case, or a reference variant
(`bmm`, `loop`) failed at a bench shape; 2 usage or unreadable golden files; 3 torch cannot
be imported; 4 torch sees no CUDA device (with --device cuda).
"""
import argparse
import json
import os
import struct
import sys

# Contract default tolerances by run dtype (atol = rtol).
TOL = {"F32": 1e-4, "F16": 2e-3, "BF16": 2e-2}
PEER_OPS = ("mla_decode", "moe_experts")
# The moe_experts inputs the peer runs (routed experts in the run dtype or FP8 with scales).
EXPERTS_INPUTS = {"in.x", "in.w13", "in.w2", "in.topk_ids", "in.topk_weights",
                  "in.w13_scale", "in.w2_scale"}
RUN_ARG = {"mla_decode": "in.q", "moe_experts": "in.x"}
MLA_D_QK, MLA_D_V = 576, 512
DEEPSEEK_V3_SOFTMAX_SCALE = 0.1352337788608801


# ---- torch-free parts (unit-tested without torch) ----------------------------------------

def read_header(path):
    """The safetensors header of `path`: (metadata dict, {tensor name: (dtype, shape)})."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: header length {n} is implausible")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    return meta, {k: (v["dtype"], v["shape"]) for k, v in header.items()}


def supported(op, params, tensors):
    """Whether the peer's functions run this case: mla_decode over a dense cache;
    moe_experts with routed experts only (run dtype, or FP8 w8a16), no activation
    quantization."""
    if op == "mla_decode":
        return params.get("kv_format", "dense") == "dense"
    inputs = {k for k in tensors if k.startswith("in.")}
    return inputs <= EXPERTS_INPUTS and params.get("activation_quant", "none") == "none"


def golden_cases(dirs):
    """The mla_decode and moe_experts cases under `dirs` (files or directories, walked
    sorted) that the peer runs ([`supported`]): a list of dicts with path, op, params, run
    dtype and tolerance per output."""
    files = []
    for d in dirs:
        if os.path.isfile(d):
            files.append(d)
        elif os.path.isdir(d):
            for root, subdirs, names in os.walk(d):
                subdirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".safetensors")]
        else:
            raise ValueError(f"golden path {d} does not exist")
    cases = []
    for path in files:
        meta, tensors = read_header(path)
        op = meta.get("op")
        if op not in PEER_OPS:
            continue
        run_dtype = tensors[RUN_ARG[op]][0]
        params = json.loads(meta.get("params", "{}"))
        if run_dtype not in TOL or not supported(op, params, tensors):
            continue
        cases.append({
            "path": path,
            "op": op,
            "params": params,
            "dtype": run_dtype,
            "tolerance": tolerance(run_dtype, meta.get("tolerance")),
            "outputs": sorted(k[4:] for k in tensors if k.startswith("out.")),
        })
    return cases


def tolerance(run_dtype, declared):
    """{output: (atol, rtol)}: the contract default for `run_dtype`, tightened (never
    loosened) by the case's `tolerance` metadata (JSON text or None)."""
    default = TOL[run_dtype]
    out = {}
    for name, t in (json.loads(declared) if declared else {}).items():
        out[name] = (min(default, t.get("atol", default)), min(default, t.get("rtol", default)))
    return _Tol(default, out)


class _Tol(dict):
    """Per-output tolerances with the default for outputs not named."""

    def __init__(self, default, named):
        super().__init__(named)
        self.default = default

    def get_pair(self, name):
        return self.get(name, (self.default, self.default))


def mla_case_name(dtype, b, s_q, h_q, sk, blk):
    """The case text `moemla bench` prints for this mla_decode shape."""
    return f"mla_decode {dtype} b={b} s_q={s_q} h_q={h_q} sk={sk} blk={blk}"


def experts_case_name(dtype, t, h, i, e, k):
    """The case text `moemla bench` prints for this moe_experts shape."""
    return f"moe_experts {dtype} T={t} H={h} I={i} E={e} k={k}"


def bench_shapes(quick):
    """(op, case name, shape dict) of the bench: `moemla bench --device-shapes`'s bf16
    cases, or tiny ones with --quick."""
    if quick:
        mla = [(2, 1, 16, 256, 64), (2, 2, 32, 256, 64)]
        experts = [(4, 256, 128, 8, 2), (64, 256, 128, 8, 2)]
    else:
        mla = [(128, 1, 16, 4096, 64), (128, 2, 128, 4096, 64)]
        experts = [(16, 7168, 2048, 256, 8), (4096, 7168, 2048, 256, 8)]
    out = []
    for b, s_q, h_q, sk, blk in mla:
        out.append(("mla_decode", mla_case_name("bf16", b, s_q, h_q, sk, blk),
                    dict(b=b, s_q=s_q, h_q=h_q, sk=sk, blk=blk)))
    for t, h, i, e, k in experts:
        out.append(("moe_experts", experts_case_name("bf16", t, h, i, e, k),
                    dict(t=t, h=h, i=i, e=e, k=k)))
    return out


def compare_rows(ours_reports, torch_rows):
    """Lines of a table: for each case in our bench reports (moemla bench --json), our
    median, torch's best variant's, ours / torch and our roofline fraction."""
    best = {}
    for r in torch_rows:
        if r.get("median_s") is None:
            continue
        cur = best.get(r["case"])
        if cur is None or r["median_s"] < cur["median_s"]:
            best[r["case"]] = r
    lines = [f"{'case':<52} {'ours ms':>9} {'torch ms':>9} {'ours/torch':>10} {'roofline':>8}"]
    for report in ours_reports:
        for row in report.get("rows", []):
            peer = best.get(row["case"])
            ratio = row.get("roofline_ratio")
            lines.append("{:<52} {:>9.3f} {:>9} {:>10} {:>8}".format(
                row["case"], row["time_s"] * 1e3,
                f"{peer['median_s'] * 1e3:.3f}" if peer else "-",
                f"{row['time_s'] / peer['median_s']:.2f}x" if peer else "-",
                f"{ratio * 100:.0f}%" if ratio is not None else "-",
            ))
            if peer:
                lines[-1] += f"  (torch {peer['variant']})"
    return lines


# ---- torch parts -------------------------------------------------------------------------

def mla_decode_bmm(torch, q, kv_cache, block_table, cache_seqlens, scale, causal, dv):
    """MLA decode over a paged cache as DeepSeek's reference model.py computes it: returns
    (o [B, Sq, Hq, Dv] f32, lse [B, Hq, Sq] f32)."""
    b, sq, hq, d = q.shape
    nb, bs, hkv, _ = kv_cache.shape
    g = hq // hkv
    table = block_table.long().clamp(0, nb - 1)
    kv = kv_cache[table].reshape(b, -1, hkv, d).permute(0, 2, 1, 3)  # [B, Hkv, S, D]
    s_len = kv.shape[2]
    n = cache_seqlens.long().view(b, 1)
    if bool((n < s_len).any()):
        # Slots past a sequence's length are not data (the goldens fill them with NaN):
        # select zeros there, since masked scores still multiply V (0 * NaN = NaN).
        live = torch.arange(s_len, device=q.device).view(1, s_len) < n
        kv = torch.where(live[:, None, :, None], kv, torch.zeros_like(kv))
    qg = q.reshape(b, sq, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(b, hkv, sq * g, d)
    scores = torch.matmul(qg, kv.transpose(-1, -2)).float() * scale  # [B, Hkv, Sq*G, S]
    scores = scores.view(b, hkv, sq, g, s_len)
    limit = n - sq + 1 + torch.arange(sq, device=q.device).view(1, sq) if causal else n.expand(b, sq)
    visible = torch.arange(s_len, device=q.device).view(1, 1, s_len) < limit.view(b, sq, 1)
    scores = scores.masked_fill(~visible[:, None, :, None, :], float("-inf"))
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = (p / torch.where(denom > 0, denom, torch.ones_like(denom))).to(q.dtype)
    o = torch.matmul(p.view(b, hkv, sq * g, s_len), kv[..., :dv])  # [B, Hkv, Sq*G, Dv]
    o = o.view(b, hkv, sq, g, dv).permute(0, 2, 1, 3, 4).reshape(b, sq, hq, dv).float()
    lse = (torch.log(denom) + m).squeeze(-1)  # [B, Hkv, Sq, G]
    lse = lse.permute(0, 1, 3, 2).reshape(b, hq, sq)
    return o, lse


def weight_dequant(torch, codes, scale, dtype):
    """FP8 e4m3 codes [R, C] times their 128x128 block scales [ceil(R/128), ceil(C/128)],
    in `dtype` (DeepSeek's weight_dequant)."""
    r, c = codes.shape
    full = scale.repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)[:r, :c]
    return (codes.to(torch.float32) * full).to(dtype)


def moe_experts_loop(torch, x, w13, w2, topk_ids, topk_weights, w13_scale=None, w2_scale=None,
                     swiglu_limit=None):
    """Routed experts the reference way: a loop over the experts that have tokens (FP8
    weights dequantized per expert). Slots with id -1 or weight 0 contribute nothing.
    Returns y [T, H] f32."""
    F = torch.nn.functional
    t, h = x.shape
    inter = w2.shape[2]
    y = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    valid = (topk_ids >= 0) & (topk_weights != 0)
    for e in torch.unique(topk_ids[valid]).tolist():
        rows, slots = torch.nonzero(valid & (topk_ids == e), as_tuple=True)
        a, b = w13[e], w2[e]
        if w13_scale is not None:
            a = weight_dequant(torch, a, w13_scale[e], x.dtype)
            b = weight_dequant(torch, b, w2_scale[e], x.dtype)
        hidden = x[rows] @ a.t()
        gate, up = hidden[:, :inter].float(), hidden[:, inter:].float()
        if swiglu_limit is not None:
            gate = gate.clamp(max=swiglu_limit)
            up = up.clamp(-swiglu_limit, swiglu_limit)
        act = (F.silu(gate) * up).to(x.dtype)
        out = act @ b.t()
        y.index_add_(0, rows, out.float() * topk_weights[rows, slots].float()[:, None])
    return y


def moe_experts_grouped(torch, x, w13, w2, topk_ids, topk_weights):
    """Routed experts sorted by expert through torch._grouped_mm (bf16): one grouped GEMM
    for gate/up over every expert, one for down."""
    F = torch.nn.functional
    t, h = x.shape
    e_count, inter, k = w13.shape[0], w2.shape[2], topk_ids.shape[1]
    valid = (topk_ids >= 0) & (topk_weights != 0)
    key = torch.where(valid, topk_ids.long(), torch.full_like(topk_ids.long(), e_count)).reshape(-1)
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=e_count + 1)[:e_count]
    offs = torch.cumsum(counts, 0).to(torch.int32)
    n = int(offs[-1])
    y = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    if n == 0:
        return y
    sel = order[:n]
    rows = sel // k
    hidden = torch._grouped_mm(x[rows], w13.transpose(1, 2), offs=offs)
    act = (F.silu(hidden[:, :inter].float()) * hidden[:, inter:].float()).to(x.dtype)
    out = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)
    y.index_add_(0, rows, out.float() * topk_weights.reshape(-1)[sel].float()[:, None])
    return y


def run_case(torch, variant, op, params, t):
    if op == "mla_decode":
        return mla_decode_bmm(torch, t["q"], t["kv_cache"], t["block_table"], t["cache_seqlens"],
                              params["softmax_scale"], params["causal"], params["head_dim_v"])
    if "w13_scale" in t or params.get("swiglu_limit") is not None:
        return (moe_experts_loop(torch, t["x"], t["w13"], t["w2"], t["topk_ids"], t["topk_weights"],
                                 t.get("w13_scale"), t.get("w2_scale"), params.get("swiglu_limit")),)
    fn = moe_experts_loop if variant == "loop" else moe_experts_grouped
    return (fn(torch, t["x"], t["w13"], t["w2"], t["topk_ids"], t["topk_weights"]),)


def variants(op, dtype, params=None):
    if op == "mla_decode":
        return ["bmm"]
    plain = not (params or {}).get("swiglu_limit")
    return ["loop", "grouped"] if dtype in ("BF16", "bf16") and plain else ["loop"]


def within(torch, got, exp, atol, rtol):
    """(ok, worst error / allowance): NaN never passes; infinities must match exactly."""
    got = got.float()
    exp = exp.float()
    if got.shape != exp.shape:
        return False, float("inf")
    inf = torch.isinf(exp)
    same_inf = (got == exp) & inf
    err = (got - exp).abs()
    allow = atol + rtol * exp.abs()
    ok_elem = torch.where(inf, same_inf, err <= allow) & ~torch.isnan(got)
    # Error over allowance per element: 0 or inf for expected infinities, inf for NaN.
    ratio = torch.where(inf, torch.where(same_inf, torch.zeros_like(err), torch.full_like(err, float("inf"))),
                        err / allow)
    ratio = torch.nan_to_num(ratio, nan=float("inf"))
    worst = float(ratio.max()) if ratio.numel() else 0.0
    return bool(ok_elem.all()), worst


def check_goldens(torch, cases, device):
    """Runs every case through every variant; returns (failures of reference variants,
    {variant: reason} for optional variants that failed)."""
    from safetensors import safe_open

    failures, broken = [], {}
    for c in cases:
        with safe_open(c["path"], framework="pt", device=device) as f:
            t = {k[3:]: f.get_tensor(k) for k in f.keys() if k.startswith("in.")}
            exp = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("out.")}
        names = ["o", "lse"] if c["op"] == "mla_decode" else ["y"]
        for v in variants(c["op"], c["dtype"], c["params"]):
            if "w13_scale" in t and v != "loop":
                continue
            if v in broken:
                continue
            rel = os.path.relpath(c["path"])
            try:
                got = run_case(torch, v, c["op"], c["params"], t)
                bad = []
                for name, g in zip(names, got):
                    ok, worst = within(torch, g, exp[name], *c["tolerance"].get_pair(name))
                    if not ok:
                        bad.append(f"{name} off by {worst:.3g}x its tolerance")
                err = "; ".join(bad)
            except Exception as e:  # noqa: BLE001 (reported, with the case)
                err = f"{type(e).__name__}: {e}"
            if not err:
                continue
            if v in ("bmm", "loop"):
                failures.append(f"{rel} [{v}]: {err}")
                print(f"GOLDEN FAIL {rel} [{v}]: {err}", flush=True)
            else:
                broken[v] = f"{rel}: {err}"
                print(f"variant {v} dropped: {rel}: {err}", flush=True)
    return failures, broken


def time_ms(torch, fn, min_reps=3, max_reps=20, target_s=1.0):
    """Median milliseconds of fn() by CUDA events after one warm-up (host clock on CPU)."""
    import time

    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    times, spent = [], 0.0
    while len(times) < min_reps or (len(times) < max_reps and spent < target_s):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ms = a.elapsed_time(b)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        spent += ms / 1e3
    times.sort()
    return times[len(times) // 2], len(times)


def ceilings(torch, device, quick):
    """Copy bandwidth (bytes read + written per second) and bf16 GEMM FLOP/s."""
    n_bytes = (64 << 20) if quick else (2 << 30)
    src = torch.rand(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_ms(torch, lambda: dst.copy_(src))
    del src, dst
    n = 512 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    gms, _ = time_ms(torch, lambda: a @ b)
    return {"copy_bytes": n_bytes, "copy_bytes_per_s": 2 * n_bytes / (ms / 1e3),
            "gemm_size": n, "gemm_bf16_flop_per_s": 2 * n ** 3 / (gms / 1e3)}


def bench(torch, device, quick, broken):
    """Times every variant at every bench shape; returns rows."""
    rows = []
    dt = torch.bfloat16
    experts_w = {}
    for op, name, s in bench_shapes(quick):
        for v in variants(op, "bf16"):
            row = {"case": name, "op": op, "variant": v, "median_s": None}
            if v in broken:
                row["error"] = f"dropped: disagrees with or fails on a golden case ({broken[v]})"
                rows.append(row)
                continue
            try:
                if op == "mla_decode":
                    b, blocks = s["b"], s["sk"] // s["blk"]
                    q = torch.empty(b, s["s_q"], s["h_q"], MLA_D_QK, device=device, dtype=dt).uniform_(-1, 1)
                    kv = torch.empty(b * blocks, s["blk"], 1, MLA_D_QK, device=device, dtype=dt).uniform_(-1, 1)
                    table = torch.randperm(b * blocks, device=device).view(b, blocks).int()
                    lens = torch.full((b,), s["sk"], device=device, dtype=torch.int32)
                    fn = lambda: mla_decode_bmm(torch, q, kv, table, lens,  # noqa: E731
                                                DEEPSEEK_V3_SOFTMAX_SCALE, True, MLA_D_V)
                else:
                    key = (s["h"], s["i"], s["e"])
                    if key not in experts_w:
                        experts_w.clear()
                        sc = s["h"] ** -0.5
                        experts_w[key] = (
                            torch.empty(s["e"], 2 * s["i"], s["h"], device=device, dtype=dt).uniform_(-sc, sc),
                            torch.empty(s["e"], s["h"], s["i"], device=device, dtype=dt).uniform_(-sc, sc))
                    w13, w2 = experts_w[key]
                    x = torch.empty(s["t"], s["h"], device=device, dtype=dt).uniform_(-1, 1)
                    ids = torch.rand(s["t"], s["e"], device=device).argsort(dim=1)[:, : s["k"]].int()
                    wts = 0.5 + 0.5 * torch.rand(s["t"], s["k"], device=device)
                    f = moe_experts_loop if v == "loop" else moe_experts_grouped
                    fn = lambda: f(torch, x, w13, w2, ids, wts)  # noqa: E731
                ms, reps = time_ms(torch, fn)
                row.update(median_s=ms / 1e3, reps=reps)
            except Exception as e:  # noqa: BLE001 (recorded in the row)
                row["error"] = f"{type(e).__name__}: {e}"
            finally:
                fn = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            rows.append(row)
            shown = f"{row['median_s'] * 1e3:9.3f} ms" if row["median_s"] is not None else row["error"][:90]
            print(f"{name:<52} {v:<8} {shown}", flush=True)
    return rows


def time_cases(torch, files, device, min_reps, max_reps, target_s):
    """Times each case file with the reference variant (`bmm`, `loop`) in the case's run
    dtype; prints {"file", "median_s"} per file. A case the peer does not run is an error
    (exit 2): `moemla bench` sends only the ones it does."""
    import time

    from safetensors import safe_open

    for path in files:
        meta, header = read_header(path)
        op, params = meta.get("op"), json.loads(meta.get("params", "{}"))
        if op not in PEER_OPS or not supported(op, params, header):
            print(f"torch_peer: {path}: {op} with these inputs is not run by this peer", file=sys.stderr)
            return 2
        with safe_open(path, framework="pt", device=device) as f:
            t = {k[3:]: f.get_tensor(k) for k in f.keys() if k.startswith("in.")}
        variant = "bmm" if op == "mla_decode" else "loop"

        def fn():
            with torch.inference_mode():
                return run_case(torch, variant, op, params, t)

        fn()  # warm-up
        times, start = [], time.perf_counter()
        while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < target_s):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        print(json.dumps({"file": path, "median_s": times[len(times) // 2]}), flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", action="append", default=[], help="golden directory or case file (repeatable)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--ours", action="append", default=[], help="a moemla bench --json report to compare")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the script only")
    ap.add_argument("--no-bench", action="store_true", help="the golden check only")
    ap.add_argument("--cases", action="store_true",
                    help="time the case files given (moemla bench --peer torch) instead of the GPU shapes")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=30)
    ap.add_argument("--target-ms", type=float, default=1500)
    ap.add_argument("files", nargs="*", help="case files (with --cases)")
    a = ap.parse_args()
    if a.files and not a.cases:
        ap.error("case files are timed with --cases")
    if not a.golden:
        ap.error("--golden is required: the peer checks itself before it is timed")
    try:
        cases = golden_cases(a.golden)
    except (OSError, ValueError, KeyError) as e:
        print(f"torch_peer: {e}", file=sys.stderr)
        return 2
    if not cases:
        print("torch_peer: no mla_decode or moe_experts case in " + ", ".join(a.golden), file=sys.stderr)
        return 2
    try:
        import torch
    except Exception as e:  # noqa: BLE001 (any import failure means no torch here)
        print(f"torch not importable: {type(e).__name__}: {e}")
        return 3
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA device")
        return 4
    dev_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    print(f"torch {torch.__version__} on {dev_name}; {len(cases)} golden cases", flush=True)

    failures, broken = check_goldens(torch, cases, a.device)
    print(f"golden check: {len(cases) - len(failures)} of {len(cases)} cases agree"
          + (f"; optional variants dropped: {', '.join(broken)}" if broken else ""), flush=True)
    if a.cases:
        if failures:
            return 1
        return time_cases(torch, a.files, a.device, a.min_reps, a.max_reps, a.target_ms / 1e3)
    report = {"torch": torch.__version__, "device": dev_name,
              "golden": {"cases": len(cases), "failures": failures, "dropped_variants": broken},
              "ceilings": None, "rows": []}
    if not failures and not a.no_bench:
        report["ceilings"] = ceilings(torch, a.device, a.quick)
        c = report["ceilings"]
        print(f"ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
              f"bf16 GEMM {c['gemm_bf16_flop_per_s'] / 1e12:.0f} TFLOP/s ({c['gemm_size']}^3)", flush=True)
        report["rows"] = bench(torch, a.device, a.quick, broken)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    ours = []
    for path in a.ours:
        try:
            with open(path) as f:
                ours.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"(no bench report {path}: {e})")
    if ours and report["rows"]:
        print("\n".join(compare_rows(ours, report["rows"])))
    ref_failed = [r for r in report["rows"] if r["variant"] in ("bmm", "loop") and r["median_s"] is None]
    return 1 if failures or ref_failed else 0


if __name__ == "__main__":
    sys.exit(main())
