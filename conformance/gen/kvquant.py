"""mla_kv_quantize cases: the 656-byte FP8 latent rows, compared byte for byte."""

import numpy as np

import fp8
import lowp
import ops_ref
from case import Case, case_rng
from checks import CaseError, fair_bytes, record_fairness
from writer import to_run_dtype

PARAMS = {"kv_format": "fp8_ds_v32"}


def _designed_rows(dtype):
    """Rows whose tiles hit the contract's corners (float64 values, exact in every run dtype).

    row 0: an all-zero tile, an all -0.0 tile, a tile of ~1e-3 values (scale floor 1e-4 ->
           2^-13) with negative values too small for e4m3 (-> 0x80), a tile of ~1e3 values.
    row 1: amax 56 = 448 * 2^-3 (scale exactly 2^-3, a +448 code) with values on exact e4m3
           ties (normal and subnormal: ties to even), -0.0 among them; the rope holds -0.0,
           bf16 ties and values needing rounding (f32/f16 input).
    row 2 (f32 input only): tiles whose amax / 448 is 2^k (1 + 2^-23) in f32, where a float
           log2 gives 2^k instead of the contract's 2^(k+1).
    """
    rows = np.zeros((3 if dtype == "f32" else 2, 576))
    # row 0
    rows[0, 128:256] = -0.0
    small = np.linspace(-1.3e-3, 1.1e-3, 128)
    small[:4] = [-2.0**-26, -(2.0**-24), 2.0**-25, -(2.0**-30)]  # below half the smallest step
    rows[0, 256:384] = small
    rows[0, 384:512] = np.linspace(-997.0, 1000.0, 128)
    rows[0, 512:] = np.linspace(-2.0, 3.0, 64)
    # row 1
    sc = 2.0**-3
    ties = [1.0625, 1.1875, 1.3125, 1.4375, 2.125, 2.375, 15.5, 26.0, 104.0, 208.0, 3 * 2.0**-10, 5 * 2.0**-10, 2.0**-10, 2.0**-6 * 1.0625]
    tile = np.zeros(128)
    tile[0] = 448.0
    tile[1 : 1 + len(ties)] = ties
    tile[20 : 20 + len(ties)] = [-v for v in ties]
    tile[40] = -0.0
    tile[41:128] = np.linspace(-300.0, 300.0, 87)
    rows[1, 0:128] = tile * sc
    rows[1, 128:256] = tile[::-1] * 2.0**5  # same codes at scale 2^5 (amax 14336)
    rows[1, 256:384] = np.linspace(-1.0, 0.5, 128)
    rows[1, 384:512] = np.where(np.arange(128) % 2 == 0, 1.0, -1.0) * 0.0448  # amax/448 = 1e-4 + ...
    rope = np.linspace(-1.0, 1.0, 64) * 3.0
    rope[0], rope[1], rope[2] = -0.0, 1 + 2.0**-8, 1 + 3 * 2.0**-8
    rows[1, 512:] = rope
    if dtype == "f32":
        for t, k in enumerate((-5, -6, -9, -12)):
            amax = _amax_for_scale_above(k)
            vals = np.linspace(-1.0, 1.0, 128) * amax * 0.9
            vals[7] = amax
            vals[8] = -amax * 0.5
            rows[2, 128 * t : 128 * (t + 1)] = vals
        rows[2, 512:] = np.linspace(-5.0, 5.0, 64) + 1e-3
    return rows


def _amax_for_scale_above(k):
    """The smallest f32 amax with f32(amax / 448) == 2^k (1 + 2^-23)."""
    target = np.nextafter(np.float32(2.0**k), np.float32(np.inf))
    amax = np.float32(448.0 * 2.0**k)
    for _ in range(64):
        if amax / np.float32(448.0) == target:
            return float(amax)
        amax = np.nextafter(amax, np.float32(np.inf))
    raise CaseError(f"no f32 amax gives scale 2^{k}(1 + 2^-23)")


def build(dtype, name, description, random_rows):
    """Designed rows plus `random_rows` rows with per-tile magnitudes log-uniform in 1e-3..1e3
    (heavy-tailed values, so big tiles hold values that round to subnormal codes and 0)."""
    rng = case_rng("mla_kv_quantize", dtype, name)
    designed = _designed_rows(dtype)
    mags = 10.0 ** rng.uniform(-3, 3, size=(random_rows, 5))
    vals = rng.standard_t(3, size=(random_rows, 576))
    rand = vals * np.repeat(mags, [128, 128, 128, 128, 64], axis=1)
    kv = to_run_dtype(np.concatenate([designed, rand]), dtype)
    if not np.all(np.isfinite(kv.astype(np.float32))):
        raise CaseError(f"mla_kv_quantize/{dtype}/{name}: input overflowed the run dtype")
    out = ops_ref.mla_kv_quantize(kv)
    case = Case("mla_kv_quantize", dtype, name, description, dict(PARAMS), {"in.kv": kv, "out.kv_fp8": out})
    _verify(case, kv, out)
    return case


def _verify(case, kv, out):
    """The rows exercise what they claim, and an independent f32 quantizer matches byte for byte."""
    codes = out[:, :512]
    scales = np.ascontiguousarray(out[:, 512:528]).view("<f4")
    x = kv.astype(np.float32)
    want = {
        "an all-zero tile": bool((np.abs(x[:, :512].reshape(-1, 4, 128)).max(axis=2) == 0).any()),
        "-0.0 codes": bool((codes == fp8.CODE_NEG_ZERO).any()),
        "+-448 codes": bool(np.isin(codes, [fp8.CODE_POS_MAX, fp8.CODE_NEG_MAX]).any()),
        "subnormal codes": bool(((codes & 0x78) == 0).any() & ((codes & 0x7) != 0).any()),
        "the 1e-4 scale floor": bool((scales == 2.0**-13).any()),
        "scales across 2^-13..2^2": bool(scales.min() <= 2.0**-13 and scales.max() >= 2.0**2),
    }
    if case.dtype == "f32":
        pre = np.maximum(np.abs(x[:, :512].reshape(-1, 4, 128)).max(axis=2) / np.float32(448.0), np.float32(1e-4))
        float_log2 = np.exp2(np.ceil(np.log2(pre))).astype(np.float32)
        want["a tile where a float32 log2 picks the wrong power"] = bool((float_log2 != scales).any())
        want["rope values that bf16 rounds"] = bool((x[:, 512:].view(np.uint32) & 0xFFFF).any())
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise CaseError(f"{case.path}: rows lack {', '.join(missing)}")
    record_fairness(case, [fair_bytes(case, "kv_fp8", lowp.kv_quantize(kv), out)])
