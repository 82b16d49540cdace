"""mla_decode cases: paged latent cache with permuted block tables and NaN poison."""

import numpy as np

import fp8
import lowp
import ops_ref
from case import Case, case_rng
from checks import DEFAULT_TOLERANCE, CaseError, check_not_degenerate, fair_float, record_fairness, within_tolerance, worst_violation
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
    _verify_live(case, o, lse)
    got_o, got_lse = lowp.mla_decode(t["in.q"], t["in.kv_cache"], t["in.block_table"], t["in.cache_seqlens"], case.params, RUN_DTYPES[case.dtype])
    atol, rtol = DEFAULT_TOLERANCE[case.dtype]
    ratios = []
    for out, got, exp in (("o", got_o, o), ("lse", got_lse, lse)):
        if not within_tolerance(got, exp, atol, rtol):
            ratio = worst_violation(got, exp, atol, rtol)
            raise CaseError(f"{case.path}: low-precision kernel model {out} off by {ratio:.2f}x the tolerance")
        ratios.append(worst_violation(got, exp, atol, rtol))
    return max(ratios)


# ---- contract v2: mla_decode over the 656-byte FP8 latent cache ----------------------------

FP8_FORMAT = "fp8_ds_v32"
UNUSED_SLOT_BYTE = 0xFF  # e4m3 NaN codes, NaN f32 scales, NaN bf16 rope


def fp8_rows(rng, values, live):
    """Quantize cache rows [..., 576] (float64, live rows finite) into 656-byte rows.

    Live rows get per-tile scales amax / 448 * u in f32, u uniform in [1, 1.25) for three
    tiles in four and u = 1 otherwise (those tiles hold a +-448 code): not powers of two,
    as a foreign quantizer may write. 1% of the codes become -0.0 (0x80). Rope: bf16. Rows
    not live are 0xFF bytes throughout. Returns uint8 [..., 656].
    """
    lead = values.shape[:-1]
    flat = values.reshape(-1, 576)
    mask = np.asarray(live).reshape(-1)
    out = np.full((flat.shape[0], fp8.ROW_BYTES), UNUSED_SLOT_BYTE, dtype=np.uint8)
    x = flat[mask].astype(np.float32)
    n = x.shape[0]
    tiles = x[:, :512].reshape(n, 4, 128)
    u = np.where(rng.uniform(size=(n, 4)) < 0.75, rng.uniform(1.0, 1.25, size=(n, 4)), 1.0)
    scales = (np.abs(tiles).max(axis=2) / np.float32(448.0) * u).astype(np.float32)
    codes = fp8.e4m3_encode(tiles / scales[:, :, None]).reshape(n, 512)
    neg_zero = (rng.uniform(size=codes.shape) < 0.01) & ~np.isin(codes, [fp8.CODE_POS_MAX, fp8.CODE_NEG_MAX])
    codes[neg_zero] = fp8.CODE_NEG_ZERO
    out[mask] = fp8.pack_ds_v32_rows(codes, scales, fp8.bf16_bits(x[:, 512:]))
    return out.reshape(*lead, fp8.ROW_BYTES)


def check_fp8_rows(path, rows, live):
    """Live rows carry non-power-of-two scales, +-448 and -0.0 codes; the rest are 0xFF."""
    flat = rows.reshape(-1, fp8.ROW_BYTES)
    mask = np.asarray(live).reshape(-1)
    if not np.all(flat[~mask] == UNUSED_SLOT_BYTE) or not (~mask).any():
        raise CaseError(f"{path}: unused cache slots must exist and hold 0xFF bytes")
    used = flat[mask]
    scales = np.ascontiguousarray(used[:, 512:528]).view("<f4")
    mant = scales.view(np.uint32) & 0x7FFFFF
    if np.mean(mant != 0) < 0.9:
        raise CaseError(f"{path}: too few non-power-of-two scales in used rows")
    codes = used[:, :512]
    for code in (fp8.CODE_POS_MAX, fp8.CODE_NEG_MAX, fp8.CODE_NEG_ZERO):
        if not (codes == code).any():
            raise CaseError(f"{path}: used rows lack code {code:#04x}")


def build_fp8(dtype, name, description, seqlens, s_q, h_q, block_size, causal, softmax_scale, q_std=1.0, kv_std=0.5, extra_blocks=1):
    """mla_decode over a U8 [num_blocks, block_size, 1, 656] cache; q in f16/bf16."""
    rng = case_rng("mla_decode", dtype, name)
    values, table = _paged_cache(rng, seqlens, block_size, 1, 576, kv_std, extra_blocks)
    live = np.isfinite(values[..., 0])
    cache = fp8_rows(rng, values, live)
    q = to_run_dtype(rng.standard_normal((len(seqlens), s_q, h_q, 576)) * q_std, dtype)
    cache_seqlens = np.asarray(seqlens, dtype=np.int32)
    params = {"softmax_scale": softmax_scale, "causal": causal, "head_dim_v": 512, "kv_format": FP8_FORMAT}
    o, lse = ops_ref.mla_decode(q, fp8.unpack_ds_v32_rows(cache), table, cache_seqlens, params)
    tensors = {
        "in.q": q,
        "in.kv_cache": cache,
        "in.block_table": table,
        "in.cache_seqlens": cache_seqlens,
        "out.o": o.astype(np.float32),
        "out.lse": lse.astype(np.float32),
    }
    case = Case("mla_decode", dtype, name, description, params, tensors)
    check_fp8_rows(case.path, cache, live)
    _verify_live(case, o, lse)
    model = lowp.dequantize_cache(cache, RUN_DTYPES[dtype])
    got_o, got_lse = lowp.mla_decode(q, model, table, cache_seqlens, params, RUN_DTYPES[dtype])
    record_fairness(case, [fair_float(case, "o", got_o, o), fair_float(case, "lse", got_lse, lse)])
    return case


def _verify_live(case, o, lse):
    """Empty ranges exact (o = 0, lse = -inf), the rest informative."""
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
