"""The generator's own e4m3 / bf16 / power-of-two codecs: exhaustive over all 256 e4m3 codes,
every tie between neighbouring codes, -0.0, subnormals and overflow.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import math
import unittest

import ml_dtypes
import numpy as np

import fp8


def f32(x):
    return np.float32(x)


def next_up(x):
    return np.nextafter(f32(x), f32(np.inf))


def next_down(x):
    return np.nextafter(f32(x), f32(-np.inf))


class E4M3DecodeTest(unittest.TestCase):
    def test_all_256_codes_by_formula_and_against_ml_dtypes(self):
        ours = fp8.e4m3_decode(np.arange(256, dtype=np.uint8))
        theirs = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        self.assertEqual([c for c in range(256) if np.isnan(ours[c])], [0x7F, 0xFF])
        np.testing.assert_array_equal(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)])
        np.testing.assert_array_equal(np.signbit(ours), np.arange(256) >= 128)  # 0x80 is -0.0
        self.assertEqual(ours[0x7E], 448.0)
        self.assertEqual(ours[0xFE], -448.0)
        self.assertEqual(ours[0x01], 2.0**-9)
        self.assertEqual(ours[0x08], 2.0**-6)
        self.assertEqual(ours[0x38], 1.0)


class E4M3EncodeTest(unittest.TestCase):
    FINITE = [c for c in range(256) if c not in (0x7F, 0xFF)]

    def test_every_code_round_trips(self):
        values = fp8.e4m3_decode(np.array(self.FINITE, dtype=np.uint8)).astype(np.float32)
        np.testing.assert_array_equal(fp8.e4m3_encode(values), self.FINITE)

    def test_every_tie_between_neighbours_goes_to_the_even_code(self):
        for sign in (0, 0x80):
            for c in range(0x00, 0x7E):  # neighbours c, c+1 up to (416, 448)
                lo, hi = fp8.E4M3_VALUES[c | sign], fp8.E4M3_VALUES[(c + 1) | sign]
                mid = f32((lo + hi) / 2)
                self.assertEqual(float(mid), (lo + hi) / 2)  # exact in f32
                even = c if c % 2 == 0 else c + 1
                got = fp8.e4m3_encode([mid, next_up(abs(mid)) * (-1 if sign else 1), next_down(abs(mid)) * (-1 if sign else 1)])
                self.assertEqual(got[0], even | sign, f"tie between {c:#x} and {c + 1:#x}")
                self.assertEqual(got[1], (c + 1) | sign)
                self.assertEqual(got[2], c | sign)

    def test_zero_signs_and_below_the_smallest_subnormal(self):
        tiny = float(np.finfo(np.float32).smallest_subnormal)
        cases = [
            (0.0, 0x00),
            (-0.0, 0x80),
            (2.0**-10, 0x00),  # tie between 0 and 2^-9: even is 0
            (-(2.0**-10), 0x80),
            (float(next_up(2.0**-10)), 0x01),
            (float(next_down(2.0**-10)), 0x00),
            (2.0**-11, 0x00),
            (3 * 2.0**-10, 0x02),  # tie between 1 and 2 (x 2^-9): even is 2
            (tiny, 0x00),
            (-tiny, 0x80),
            (float(np.finfo(np.float32).tiny), 0x00),
        ]
        got = fp8.e4m3_encode([v for v, _ in cases])
        self.assertEqual([int(g) for g in got], [c for _, c in cases])

    def test_overflow_saturates_where_ml_dtypes_gives_nan(self):
        big = [448.0, 449.0, float(next_down(464.0)), 464.0, float(next_up(464.0)), 480.0, 1e6, float(np.finfo(np.float32).max), math.inf]
        got = fp8.e4m3_encode(big + [-v for v in big])
        np.testing.assert_array_equal(got, [0x7E] * len(big) + [0xFE] * len(big))
        # The reason for our own encoder: ml_dtypes' cast does not saturate.
        self.assertTrue(np.isnan(np.array([480.0, math.inf], dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)).all())

    def test_nan_keeps_its_sign_bit(self):
        neg_nan = np.array([0xFFC00000], dtype=np.uint32).view(np.float32)[0]
        np.testing.assert_array_equal(fp8.e4m3_encode([np.nan, neg_nan]), [0x7F, 0xFF])

    def test_agrees_with_ml_dtypes_on_random_f32_in_range(self):
        rng = np.random.RandomState(1)
        bits = rng.randint(0, 2**32, size=400000, dtype=np.uint64).astype(np.uint32)
        v = bits.view(np.float32)
        v = v[np.isfinite(v) & (np.abs(v) < 464)]
        # Dense sweep of the interesting binades too: every 2^11-th f32 in [2^-12, 464).
        sweep = np.arange(np.float32(2.0**-12).view(np.uint32), np.float32(464.0).view(np.uint32), 2048, dtype=np.uint32).view(np.float32)
        v = np.concatenate([v, sweep, -sweep])
        want = v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        np.testing.assert_array_equal(fp8.e4m3_encode(v), want)


class Pow2AndBf16Test(unittest.TestCase):
    def test_pow2_ceil_from_bits(self):
        one_ulp_up = [float(next_up(2.0**k)) for k in (-13, -5, 0, 2, 7)]
        got = fp8.pow2_ceil_f32([1.0, 0.75, 1e-4, 2.0**-13, 3.0] + one_ulp_up)
        np.testing.assert_array_equal(got, [1.0, 1.0, 2.0**-13, 2.0**-13, 4.0] + [2.0**k for k in (-12, -4, 1, 3, 8)])
        # The case the contract warns about: a float32 log2 rounds 2^k(1 + 2^-23) to k.
        x = next_up(2.0**-5)
        self.assertEqual(np.ceil(np.log2(x)), -5.0)  # numpy's f32 log2: the wrong power
        self.assertEqual(fp8.pow2_ceil_f32([x])[0], 2.0**-4)
        with self.assertRaises(ValueError):
            fp8.pow2_ceil_f32([0.0])

    def test_bf16_round_to_nearest_even_against_ml_dtypes(self):
        rng = np.random.RandomState(2)
        v = (rng.standard_normal(100000) * np.exp(rng.uniform(-20, 20, 100000))).astype(np.float32)
        ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0, -0.0], dtype=np.float32)
        v = np.concatenate([v, ties])
        np.testing.assert_array_equal(fp8.bf16_bits(v), v.astype(ml_dtypes.bfloat16).view(np.uint16))
        self.assertEqual(list(fp8.bf16_bits(ties[:2])), [0x3F80, 0x3F82])


class CacheRowTest(unittest.TestCase):
    def test_pack_unpack_layout(self):
        codes = np.zeros((1, 512), dtype=np.uint8)
        codes[0, 0], codes[0, 130], codes[0, 511] = 0x38, 0xFE, 0x80  # 1.0, -448, -0.0
        scales = np.array([[0.5, 3.0, 1.0, 0.1]], dtype=np.float32)
        rope = fp8.bf16_bits(np.linspace(-1, 1, 64, dtype=np.float32))[None, :]
        row = fp8.pack_ds_v32_rows(codes, scales, rope)
        self.assertEqual(row.shape, (1, 656))
        self.assertEqual(bytes(row[0, 512:516]), np.float32(0.5).tobytes())
        self.assertEqual(bytes(row[0, 528:530]), int(rope[0, 0]).to_bytes(2, "little"))
        k = fp8.unpack_ds_v32_rows(row)[0]
        self.assertEqual((k[0], k[130], k[511]), (0.5, -448.0 * 3.0, -0.0))
        self.assertTrue(np.signbit(k[511]))
        self.assertEqual(k[1], 0.0)
        np.testing.assert_array_equal(k[512:], np.linspace(-1, 1, 64, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float64))

    def test_ff_slots_decode_to_nan(self):
        k = fp8.unpack_ds_v32_rows(np.full((2, 656), 0xFF, dtype=np.uint8))
        self.assertTrue(np.isnan(k).all())

    def test_block_quantize_partial_blocks(self):
        rng = np.random.RandomState(3)
        w = rng.standard_normal((2, 200, 72))
        codes, scale = fp8.block_quantize(w)
        self.assertEqual(scale.shape, (2, 2, 1))
        back = fp8.block_dequantize(codes, scale)
        self.assertEqual(back.shape, w.shape)
        # every block's largest magnitude lands on +-448 exactly
        self.assertTrue(np.isin(codes[0, :128], [0x7E, 0xFE]).any() and np.isin(codes[0, 128:], [0x7E, 0xFE]).any())
        np.testing.assert_allclose(back, w, rtol=2**-4, atol=float(scale.max()) * 2**-9)


if __name__ == "__main__":
    unittest.main()
