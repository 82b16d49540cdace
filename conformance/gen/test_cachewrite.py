"""Hand-worked checks of the mla_cache_write reference.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import unittest

import numpy as np

import ops_ref


class CacheWriteTest(unittest.TestCase):
    def test_dense_rows_land_at_their_slots_and_the_later_row_wins(self):
        cache = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2)
        kv = np.array([[100, 101], [200, 201], [300, 301], [400, 401]], dtype=np.float32)
        out = ops_ref.mla_cache_write(kv, [4, -1, 0, 4], cache, "dense")
        want = cache.copy()
        want[0, 0, 0] = [300, 301]
        want[1, 1, 0] = [400, 401]  # slot 4 = block 1, offset 1: row 3 after row 0
        np.testing.assert_array_equal(out, want)
        self.assertEqual(cache[0, 0, 0, 0], 0.0)  # the input is not modified

    def test_fp8_rows_are_mla_kv_quantize_rows(self):
        cache = np.full((1, 2, 1, 656), 0xAB, dtype=np.uint8)
        kv = np.linspace(-3.0, 5.0, 576, dtype=np.float32)[None, :]
        out = ops_ref.mla_cache_write(kv, [1], cache, "fp8_ds_v32")
        np.testing.assert_array_equal(out[0, 1, 0], ops_ref.mla_kv_quantize(kv)[0])
        self.assertTrue((out[0, 0] == 0xAB).all())

    def test_skipped_rows_are_never_read_and_bad_slots_raise(self):
        cache = np.zeros((1, 2, 1, 656), dtype=np.uint8)
        kv = np.full((2, 576), np.nan, dtype=np.float32)
        kv[1] = 1.0
        out = ops_ref.mla_cache_write(kv, [-1, 0], cache, "fp8_ds_v32")
        self.assertTrue((out[0, 1] == 0).all())
        with self.assertRaises(ValueError):
            ops_ref.mla_cache_write(kv[1:], [2], cache, "fp8_ds_v32")
        with self.assertRaises(ValueError):
            ops_ref.mla_cache_write(kv[1:], [-2], cache, "fp8_ds_v32")


if __name__ == "__main__":
    unittest.main()
