"""Bit-exact codecs of contract v2, written from docs/ops.md with integer arithmetic.

- e4m3 (OCP e4m3fn: bias 7, max 448, NaN 0x7F/0xFF, 0x80 = -0.0): `e4m3_encode` rounds an f32
  value to nearest, ties to even, and saturates |v| > 448 (inf included) to +-448. ml_dtypes'
  float8_e4m3fn cast does NOT saturate (470 and inf become NaN), so it is used only as an
  independent cross-check (tests, lowp.py), never as the reference.
- `pow2_ceil_f32`: 2^ceil(log2 s) from the f32 bits (no float log2).
- `bf16_bits`: f32 -> bf16 round-to-nearest-even, as raw uint16.
- The 656-byte FP8 latent cache row (`pack_ds_v32_rows` / `unpack_ds_v32_rows`).
"""

import math

import numpy as np

E4M3_MAX = 448.0
CODE_POS_MAX = 0x7E  # +448
CODE_NEG_MAX = 0xFE  # -448
CODE_NEG_ZERO = 0x80

ROW_BYTES = 656  # fp8_ds_v32 row: 512 codes, 4 f32 scales, 64 bf16 rope values
LATENT, ROPE, TILE = 512, 64, 128


def _decode_code(c):
    """Value of one e4m3fn code (python float; NaN for 0x7F/0xFF)."""
    sign = -1.0 if c & 0x80 else 1.0
    exp, man = (c >> 3) & 0xF, c & 0x7
    if exp == 0xF and man == 0x7:
        return math.copysign(math.nan, sign)
    if exp == 0:
        return sign * man * 2.0**-9
    return sign * 2.0 ** (exp - 7) * (1.0 + man / 8.0)


# All 256 code values as float64 (exact: 4 significant bits).
E4M3_VALUES = np.array([_decode_code(c) for c in range(256)], dtype=np.float64)


def e4m3_decode(codes):
    """uint8 codes -> float64 values (exact)."""
    return E4M3_VALUES[np.asarray(codes, dtype=np.uint8)]


def e4m3_encode(values):
    """float32 values -> uint8 e4m3fn codes: round to nearest even, saturate at +-448.

    Works on the f32 bit pattern: the 24-bit significand S of |v| is shifted right so that
    its last kept bit is the e4m3 quantum of v's binade (2^(e-3) for e >= -6, the subnormal
    quantum 2^-9 below), rounding the dropped bits to nearest, ties to even. NaN -> 0x7F with
    the input's sign bit; -0.0 -> 0x80.
    """
    v = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    bits = v.view(np.uint32).astype(np.int64)
    sign = (bits >> 31) << 7
    exp_field = (bits >> 23) & 0xFF
    man = bits & 0x7FFFFF
    is_nan = (exp_field == 0xFF) & (man != 0)
    # f32 subnormals (< 2^-126) are far below e4m3's smallest step: treat them as zero.
    sig = np.where(exp_field > 0, man | (1 << 23), 0)
    e = exp_field - 127  # unbiased exponent of a normal f32
    # Bits to drop: 20 in e4m3's normal range, more below 2^-6 (quantum 2^-9 = 2^(e-23+shift)).
    shift = np.where(e >= -6, 20, np.minimum(14 - e, 25))
    kept = sig >> shift
    rem = sig & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    round_up = (rem > half) | ((rem == half) & ((kept & 1) == 1))
    kept = kept + round_up
    # Normal range: kept in [8, 16]; 16 carries into the next binade.
    carry = (e >= -6) & (kept == 16)
    e_n = np.where(carry, e + 1, e)
    kept = np.where(carry, 8, kept)
    normal_code = ((e_n + 7) << 3) | (kept - 8)
    # Subnormal range: kept in [0, 8]; 8 is the smallest normal (code 0x08) - same number.
    code = np.where(e >= -6, normal_code, kept)
    overflow = (e >= -6) & ((e_n > 8) | ((e_n == 8) & (kept - 8 == 7)))  # > 448 after rounding
    code = np.where(overflow | (exp_field == 0xFF), CODE_POS_MAX, code)  # inf saturates too
    code = np.where(is_nan, 0x7F, code)
    return (code | sign).astype(np.uint8)


def pow2_ceil_f32(s):
    """2^ceil(log2 s) for positive normal f32 values s, exactly, from their bits."""
    s = np.ascontiguousarray(np.asarray(s, dtype=np.float32))
    bits = s.view(np.uint32)
    exp_field = (bits >> 23) & 0xFF
    if np.any((bits >> 31) != 0) or np.any(exp_field == 0) or np.any(exp_field >= 0xFE):
        raise ValueError("pow2_ceil_f32 needs positive normal values below 2^127")
    up = (bits & 0x7FFFFF) != 0
    out = (exp_field + up.astype(np.uint32)) << 23
    return out.astype(np.uint32).view(np.float32)


def bf16_bits(values):
    """float32 (finite) -> bf16 bit patterns (uint16), round to nearest, ties to even."""
    bits = np.ascontiguousarray(np.asarray(values, dtype=np.float32)).view(np.uint32).astype(np.uint64)
    if np.any(((bits >> 23) & 0xFF) == 0xFF):
        raise ValueError("bf16_bits: non-finite input")
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f64(bits):
    """bf16 bit patterns (uint16) -> float64 (exact; NaN patterns give NaN)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def pack_ds_v32_rows(codes, scales, rope_bits):
    """[N,512] uint8, [N,4] float32, [N,64] uint16 -> [N,656] uint8 (little-endian fields)."""
    n = codes.shape[0]
    out = np.empty((n, ROW_BYTES), dtype=np.uint8)
    out[:, :LATENT] = codes
    out[:, LATENT : LATENT + 16] = np.ascontiguousarray(scales, dtype="<f4").view(np.uint8).reshape(n, 16)
    out[:, LATENT + 16 :] = np.ascontiguousarray(rope_bits, dtype="<u2").view(np.uint8).reshape(n, 2 * ROPE)
    return out


def unpack_ds_v32_rows(rows):
    """[..., 656] uint8 -> [..., 576] float64: K[d] = e4m3(code d) * scale[d / 128], rope."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    lead = rows.shape[:-1]
    flat = rows.reshape(-1, ROW_BYTES)
    scales = np.ascontiguousarray(flat[:, LATENT : LATENT + 16]).view("<f4").astype(np.float64)
    latent = e4m3_decode(flat[:, :LATENT]) * np.repeat(scales, TILE, axis=1)
    rope = bf16_bits_to_f64(np.ascontiguousarray(flat[:, LATENT + 16 :]).view("<u2"))
    return np.concatenate([latent, rope], axis=1).reshape(*lead, LATENT + ROPE)


def block_quantize(w, block=128, scale_format="f32"):
    """The checkpoints' 128x128 block quantizer (reference data generation, f32 arithmetic).

    w [E, R, C] real values -> (codes uint8 [E, R, C], scale float32 [E, ceil(R/128),
    ceil(C/128)]): scale = amax / 448 in f32 per block (edge blocks partial), codes =
    e4m3(w / scale). Scales are generally not powers of two; scale_format "ue8m0" rounds
    each up to a power of two (pow2_ceil_f32), as DeepSeek-V3.1's checkpoints have them
    (then |w| / scale <= 448 and the +-448 codes need not occur).
    """
    if scale_format not in ("f32", "ue8m0"):
        raise ValueError(f"scale_format {scale_format!r}: f32 or ue8m0")
    w = np.asarray(w, dtype=np.float32)
    e, r, c = w.shape
    rb, cb = -(-r // block), -(-c // block)
    scale = np.empty((e, rb, cb), dtype=np.float32)
    codes = np.empty(w.shape, dtype=np.uint8)
    for i in range(rb):
        for j in range(cb):
            tile = w[:, i * block : (i + 1) * block, j * block : (j + 1) * block]
            amax = np.max(np.abs(tile), axis=(1, 2)).astype(np.float32)
            sc = np.maximum(amax, np.float32(1e-12)) / np.float32(E4M3_MAX)
            if scale_format == "ue8m0":
                sc = pow2_ceil_f32(sc)
            scale[:, i, j] = sc
            codes[:, i * block : (i + 1) * block, j * block : (j + 1) * block] = e4m3_encode(tile / sc[:, None, None])
    return codes, scale


def block_dequantize(codes, scale, block=128):
    """Wd[e, r, c] = e4m3(codes[e, r, c]) * scale[e, r / 128, c / 128], float64 (exact)."""
    full = np.repeat(np.repeat(scale.astype(np.float64), block, axis=1), block, axis=2)
    return e4m3_decode(codes) * full[:, : codes.shape[1], : codes.shape[2]]
