"""mla_decode cases: paged latent cache with permuted block tables and NaN poison."""

import numpy as np

import lowp
import ops_ref
from case import Case, case_rng
from checks import DEFAULT_TOLERANCE, CaseError, check_not_degenerate, within_tolerance, worst_violation
from writer import RUN_DTYPES, to_run_dtype

# FlashMLA's tests fill unused block-table entries with this out-of-range value.
UNUSED_BLOCK_ENTRY = 2147480000

# DeepSeek-V3 with YaRN: 192^-0.5 * (0.1 * ln(40) + 1)^2.
DEEPSEEK_V3_SOFTMAX_SCALE = 0.1352337788608801


def _paged_cache(rng, seqlens, block_size, h_kv, d_qk, kv_std, extra_blocks):
    """(kv_cache, block_table): used blocks in random physical order, everything unused NaN."""
    used = [-(-s // block_size) for s in seqlens]
    num_blocks = sum(used) + extra_blocks
    max_blocks = max(used) + 1
    physical = rng.permutation(num_blocks)
    table = np.full((len(seqlens), max_blocks), UNUSED_BLOCK_ENTRY, dtype=np.int32)
    valid = np.zeros((num_blocks, block_size), dtype=bool)
    nxt = 0
    for b, seqlen in enumerate(seqlens):
        for j in range(used[b]):
            table[b, j] = physical[nxt]
            nxt += 1
        pos = np.arange(seqlen)
        valid[table[b, pos // block_size], pos % block_size] = True
    cache = rng.standard_normal((num_blocks, block_size, h_kv, d_qk)) * kv_std
    cache[~valid] = np.nan
    return cache, table


def build(dtype, name, description, seqlens, s_q, h_q, d_qk, d_v, block_size, causal, softmax_scale, h_kv=1, q_std=1.0, kv_std=1.0, extra_blocks=1):
    """An MLA decode case over B = len(seqlens) sequences."""
    rng = case_rng("mla_decode", dtype, name)
    cache, table = _paged_cache(rng, seqlens, block_size, h_kv, d_qk, kv_std, extra_blocks)
    kv_cache = to_run_dtype(cache, dtype)
    q = to_run_dtype(rng.standard_normal((len(seqlens), s_q, h_q, d_qk)) * q_std, dtype)
    cache_seqlens = np.asarray(seqlens, dtype=np.int32)
    params = {"softmax_scale": softmax_scale, "causal": causal, "head_dim_v": d_v}
    o, lse = ops_ref.mla_decode(q, kv_cache, table, cache_seqlens, params)
    tensors = {
        "in.q": q,
        "in.kv_cache": kv_cache,
        "in.block_table": table,
        "in.cache_seqlens": cache_seqlens,
        "out.o": o.astype(np.float32),
        "out.lse": lse.astype(np.float32),
    }
    case = Case("mla_decode", dtype, name, description, params, tensors)
    case.check_ratio = _verify(case, o, lse)
    return case


def _verify(case, o, lse):
    """Empty ranges exact, the rest informative, and a flash-style kernel model in tolerance."""
    t = case.tensors
    b_count, s_q = t["in.q"].shape[:2]
    live = np.array(
        [[ops_ref.attention_length(int(t["in.cache_seqlens"][b]), s_q, i, case.params["causal"]) > 0 for i in range(s_q)] for b in range(b_count)]
    )
    live_o = np.broadcast_to(live[:, :, None, None], o.shape)
    live_lse = np.broadcast_to(live[:, None, :], lse.shape)
    if not (np.all(o[~live_o] == 0) and np.all(lse[~live_lse] == -np.inf)):
        raise CaseError(f"{case.path}: an empty attention range is not o = 0, lse = -inf")
    check_not_degenerate(f"{case.path} out.o", o, meaningful=live_o)
    check_not_degenerate(f"{case.path} out.lse", lse, meaningful=live_lse, rms_range=(0.02, 100.0))
    got_o, got_lse = lowp.mla_decode(t["in.q"], t["in.kv_cache"], t["in.block_table"], t["in.cache_seqlens"], case.params, RUN_DTYPES[case.dtype])
    atol, rtol = DEFAULT_TOLERANCE[case.dtype]
    ratios = []
    for out, got, exp in (("o", got_o, o), ("lse", got_lse, lse)):
        if not within_tolerance(got, exp, atol, rtol):
            ratio = worst_violation(got, exp, atol, rtol)
            raise CaseError(f"{case.path}: low-precision kernel model {out} off by {ratio:.2f}x the tolerance")
        ratios.append(worst_violation(got, exp, atol, rtol))
    return max(ratios)
