"""Hand-worked checks of the contract-v2 references, and cross-checks against the independent
lowp.py models and the v1 reference.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import math
import unittest

import numpy as np

import fp8
import lowp
import ops_ref

ROUTE = {"score_func": "sqrtsoftplus", "top_k": 2, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": True, "routed_scaling_factor": 1.5}


class RouteV2Test(unittest.TestCase):
    def test_sqrtsoftplus_scores(self):
        s = ops_ref.scores(np.array([[0.0, 25.0, -1000.0, 20.0, math.log(math.e - 1)]]), "sqrtsoftplus")[0]
        np.testing.assert_allclose(s, [math.sqrt(math.log(2)), 5.0, 0.0, math.sqrt(math.log1p(math.exp(20))), 1.0], rtol=1e-15)
        self.assertEqual(s[2], 0.0)

    def test_renorm_of_all_zero_scores_gives_zero_weights(self):
        logits = np.full((1, 4), -1000.0)
        bias = np.array([0.0, 0.3, 0.1, 0.2], dtype=np.float32)
        for func in ("sigmoid", "sqrtsoftplus"):
            ids, w = ops_ref.moe_route(logits, bias, dict(ROUTE, score_func=func))
            self.assertEqual(list(ids[0]), [1, 3])  # the bias alone decides
            np.testing.assert_array_equal(w, 0.0)
        _, w32 = lowp.moe_route(logits.astype(np.float32), bias, ROUTE)
        np.testing.assert_array_equal(w32, 0.0)

    def test_hash_routing(self):
        logits = np.log(np.expm1(np.array([[1.0, 4.0, 9.0, 16.0], [16.0, 9.0, 4.0, 1.0]])))  # softplus = 1, 4, 9, 16
        tid2eid = np.array([[9, 9], [0, 3], [2, 1]], dtype=np.int32)  # row 0 unread: garbage is fine
        ids, w = ops_ref.moe_route(logits, None, ROUTE, np.array([1, 2], dtype=np.int32), tid2eid)
        np.testing.assert_array_equal(ids, [[0, 3], [2, 1]])  # table order, no selection
        np.testing.assert_allclose(w, [[1 / 5 * 1.5, 4 / 5 * 1.5], [2 / 5 * 1.5, 3 / 5 * 1.5]], rtol=1e-12)
        with self.assertRaises(ValueError):
            ops_ref.moe_route(logits, np.zeros(4, dtype=np.float32), ROUTE, np.array([1, 2], dtype=np.int32), tid2eid)


class ExpertsV2Test(unittest.TestCase):
    def test_swiglu_limit(self):
        h = np.array([12.0, -3.0, 20.0, -15.0])  # g = 12, -3; u = 20, -15
        a = ops_ref.swiglu(h, 2, 10.0)
        silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
        np.testing.assert_allclose(a, [silu(10.0) * 10.0, silu(-3.0) * -10.0], rtol=1e-15)

    def test_zero_weight_slot_skips_a_nan_expert(self):
        x = np.ones((1, 2))
        w13 = np.stack([np.eye(2), np.full((2, 2), np.nan)])
        w2 = np.stack([np.ones((2, 1)), np.full((2, 1), np.nan)])
        for weight in (0.0, -0.0):
            y = ops_ref.moe_experts(x, w13, w2, np.array([[0, 1]], dtype=np.int32), np.array([[1.0, weight]], dtype=np.float32))
            np.testing.assert_allclose(y, [[1 / (1 + math.exp(-1))] * 2], rtol=1e-15)

    def test_activation_quantization_by_hand(self):
        # amax 1 -> sc = 1/448 (f32): 0.3 / sc = 134.4 -> 128 (step 16); ue8m0: sc = 2^-8, 76.8 -> 80 (step 8).
        v = np.array([1.0, 0.3], dtype=np.float32)
        sc = np.float64(np.float32(1.0) / np.float32(448.0))
        np.testing.assert_array_equal(ops_ref.quantize_activation(v, "f32"), [448 * sc, 128 * sc])
        np.testing.assert_array_equal(ops_ref.quantize_activation(v, "ue8m0"), [1.0, 80 / 256])
        # groups of 128, the last one partial with its own scale: group 1 amax 2 -> sc 2^-7;
        # group 2 amax 0.5 -> sc 2^-9: 0.1 / 2^-9 = 51.2 -> 52 (step 4) -> 0.1015625.
        row = np.zeros(130, dtype=np.float32)
        row[0], row[129], row[128] = 2.0, 0.5, 0.1
        q = ops_ref.quantize_activation(row, "ue8m0")
        self.assertEqual((q[0], q[128], q[129]), (2.0, 0.1015625, 0.5))
        np.testing.assert_array_equal(ops_ref.quantize_activation(np.zeros(3, dtype=np.float32), "f32"), 0.0)
        np.testing.assert_array_equal(ops_ref.activation_scales(np.zeros(3, dtype=np.float32), "f32"), np.float32(1e-4) / np.float32(448))

    def test_w8a8_experts_match_explicit_formula(self):
        rng = np.random.RandomState(5)
        codes13, sc13 = fp8.block_quantize(rng.standard_normal((1, 6, 130)))
        codes2, sc2 = fp8.block_quantize(rng.standard_normal((1, 130, 3)))
        w13, w2 = fp8.block_dequantize(codes13, sc13), fp8.block_dequantize(codes2, sc2)
        x = rng.standard_normal((1, 130)).astype(np.float32)
        y = ops_ref.moe_experts(x, w13, w2, np.array([[0]], dtype=np.int32), np.array([[0.5]], dtype=np.float32), "fp8_block128", "ue8m0")
        xq = ops_ref.quantize_activation(x[0], "ue8m0")
        h = w13[0] @ xq
        a = (h[:3] / (1 + np.exp(-h[:3])) * h[3:]).astype(np.float32)
        np.testing.assert_allclose(y[0], 0.5 * (w2[0] @ ops_ref.quantize_activation(a, "ue8m0")), rtol=1e-12)
        # the independent f32 model agrees to f32 accuracy (ue8m0: no division ties to move)
        got = lowp.moe_experts_v2(x, w13.astype(np.float32), w2.astype(np.float32), np.array([[0]], dtype=np.int32), np.array([[0.5]], dtype=np.float32), np.float32, "fp8_block128", "ue8m0")
        np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-6)

    def test_shared_experts_by_hand(self):
        # H 2, two shared experts of Is 1: expert 0 gate row [1, 0], up row [0, 1], down [[2], [3]];
        # expert 1 gate [0, 1], up [1, 1], down [[1], [-1]]; with the clamp at 1.5.
        silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
        x = np.array([[1.0, 2.0], [-1.0, 0.5]])
        sw13 = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
        sw2 = np.array([[[2.0], [3.0]], [[1.0], [-1.0]]])
        for limit in (None, 1.5):
            c = (lambda v: v) if limit is None else (lambda v: max(min(v, limit), -limit))  # noqa: E731
            g_only = (lambda v: v) if limit is None else (lambda v: min(v, limit))  # noqa: E731
            want = []
            for x0, x1 in x:
                a0 = silu(g_only(x0)) * c(x1)
                a1 = silu(g_only(x1)) * c(x0 + x1)
                want.append([2 * a0 + a1, 3 * a0 - a1])
            np.testing.assert_allclose(ops_ref.shared_experts(x, sw13, sw2, limit), want, rtol=1e-15)
        # Fused into the model: routed slots (token 1 has none) plus the shared experts.
        w13 = np.array([[[1.0, 1.0], [1.0, -1.0]]])
        w2 = np.array([[[0.5], [0.25]]])
        ids, weights = np.array([[0], [-1]], dtype=np.int32), np.array([[0.5], [0.9]], dtype=np.float32)
        want = ops_ref.moe_experts(x, w13, w2, ids, weights) + ops_ref.shared_experts(x, sw13, sw2)
        self.assertTrue(np.array_equal(want[1], ops_ref.shared_experts(x, sw13, sw2)[1]))
        got = lowp.moe_experts_v2(x, w13, w2, ids, weights, np.float32, shared=(sw13, sw2))
        np.testing.assert_allclose(got, want, rtol=1e-6)


class KvQuantizeTest(unittest.TestCase):
    def test_one_row_by_hand(self):
        kv = np.zeros((1, 576), dtype=np.float32)
        kv[0, 0:4] = [56.0, -0.0, 1.0625 * 2**-3, -3 * 2**-13]  # amax 56 -> sc = 2^-3
        kv[0, 128] = 1e-3  # amax/448 < 1e-4 -> sc = 2^-13: 1e-3 / 2^-13 = 8.192 -> 8
        kv[0, 384] = 1000.0  # 1000/448 = 2.23 -> sc = 4: 250 -> 256 = 2^8 (step 16, 250 rounds up)
        kv[0, 512:514] = [1 + 2**-8, -(1 + 3 * 2**-8)]  # bf16 ties: 1.0 and -(1 + 2^-6)
        row = ops_ref.mla_kv_quantize(kv)[0]
        self.assertEqual(list(row[0:4]), [0x7E, 0x80, 0x38, 0x82])  # 448, -0, 1.0 (tie to even), -2*2^-9
        self.assertEqual(row[128], 0x50)  # 8.0 = 2^3 -> exponent 10, mantissa 0
        self.assertEqual(row[384], 0x78)  # 256 = 2^8: exponent field 15, mantissa 0
        self.assertEqual(row[256], 0x00)  # all-zero tile
        scales = np.frombuffer(row[512:528].tobytes(), dtype="<f4")
        np.testing.assert_array_equal(scales, [2.0**-3, 2.0**-13, 2.0**-13, 4.0])
        self.assertEqual(list(np.frombuffer(row[528:532].tobytes(), dtype="<u2")), [0x3F80, 0xBF82])

    def test_scale_from_bits_not_float_log2(self):
        kv = np.zeros((1, 576), dtype=np.float32)
        amax = np.float32(448.0 * 2.0**-5)
        while amax / np.float32(448.0) != np.nextafter(np.float32(2.0**-5), np.float32(1)):
            amax = np.nextafter(amax, np.float32(np.inf))
        kv[0, 0] = amax
        row = ops_ref.mla_kv_quantize(kv)[0]
        self.assertEqual(np.frombuffer(row[512:516].tobytes(), dtype="<f4")[0], 2.0**-4)
        self.assertEqual(row[0], 0x76)  # amax / 2^-4 = 224.0000x -> 224 = 2^7 * 1.75

    def test_independent_models_agree_byte_for_byte(self):
        rng = np.random.RandomState(9)
        kv = (rng.standard_t(3, size=(64, 576)) * 10.0 ** rng.uniform(-3, 3, size=(64, 1))).astype(np.float32)
        kv[0, :128] = np.linspace(-1, 1, 128) * 2.0**-3 * 448 * (1 + 1 / 17)
        np.testing.assert_array_equal(lowp.kv_quantize(kv), ops_ref.mla_kv_quantize(kv))
        with self.assertRaises(ValueError):
            ops_ref.mla_kv_quantize(np.full((1, 576), np.inf, dtype=np.float32))

    def test_round_trip_error_bound(self):
        rng = np.random.RandomState(10)
        kv = rng.standard_normal((8, 576)).astype(np.float32)
        back = fp8.unpack_ds_v32_rows(ops_ref.mla_kv_quantize(kv))
        sc = np.repeat(np.frombuffer(ops_ref.mla_kv_quantize(kv)[:, 512:528].tobytes(), dtype="<f4").reshape(8, 4), 128, axis=1)
        # half a step: 2^-4 relative in the normal range, 2^-10 sc in the subnormal one
        self.assertTrue(np.all(np.abs(back[:, :512] - kv[:, :512]) <= np.maximum(np.abs(kv[:, :512]) * 2.0**-4, sc * 2.0**-10)))
        np.testing.assert_allclose(back[:, 512:], kv[:, 512:], rtol=2.0**-8)


class SparseDecodeTest(unittest.TestCase):
    PARAMS = {"softmax_scale": 0.5, "head_dim_v": 2}

    def test_duplicates_minus_one_sink_and_empty_rows(self):
        kv = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [np.nan, np.nan, np.nan]])
        q = np.zeros((1, 2, 2, 3))
        q[0, :, :, 2] = 1.0  # logits: slot 0 -> 1.0, slot 1 -> 0
        idx = np.array([[[0, 1, -1, 1], [-1, -1, -1, 2]]], dtype=np.int32)  # row 1: its NaN slot is beyond topk_length
        sink = np.array([-np.inf, 0.0], dtype=np.float32)
        o, lse = ops_ref.mla_sparse_decode(q, kv, idx, np.array([3], dtype=np.int32), sink, self.PARAMS)
        # row 0 attends slots 0, 1 (entry 3 is beyond topk_length): weights e^1, e^0
        z = math.e + 1
        np.testing.assert_allclose(o[0, 0, 0], [math.e / z, 1 / z], rtol=1e-15)
        np.testing.assert_allclose(lse[0, :, 0], [math.log(z)] * 2, rtol=1e-15)
        np.testing.assert_allclose(o[0, 0, 1], np.array([math.e / z, 1 / z]) / (1 + 1 / z), rtol=1e-15)  # sink 0
        np.testing.assert_array_equal(o[0, 1], 0.0)
        np.testing.assert_array_equal(lse[0, :, 1], -np.inf)
        # without topk_length, entry 3 (a duplicate of slot 1) counts: weights e, 1, 1
        o2, lse2 = ops_ref.mla_sparse_decode(q[:, :1], kv, idx[:, :1], None, None, self.PARAMS)
        np.testing.assert_allclose(o2[0, 0, 0], [math.e / (z + 1), 2 / (z + 1)], rtol=1e-15)
        np.testing.assert_allclose(lse2[0, 0, 0], math.log(z + 1), rtol=1e-15)

    def test_plus_inf_sink_zeroes_the_head(self):
        kv = np.array([[1.0, 2.0, 3.0]])
        o, lse = ops_ref.mla_sparse_decode(np.ones((1, 1, 1, 3)), kv, np.zeros((1, 1, 1), dtype=np.int32), None, np.array([np.inf], dtype=np.float32), self.PARAMS)
        np.testing.assert_array_equal(o, 0.0)
        self.assertEqual(lse[0, 0, 0], 3.0)

    def test_equals_dense_decode_over_all_positions(self):
        rng = np.random.RandomState(11)
        bs, nb, d, dv = 4, 5, 6, 5
        kv = rng.standard_normal((nb, bs, 1, d))
        table = np.array([[3, 0, 2147480000], [4, 1, 2]], dtype=np.int32)
        seqlens = np.array([7, 10], dtype=np.int32)
        q = rng.standard_normal((2, 1, 3, d))
        params = {"softmax_scale": 0.4, "causal": False, "head_dim_v": dv}
        o_ref, lse_ref = ops_ref.mla_decode(q, kv, table, seqlens, params)
        idx = np.full((2, 1, 10), -1, dtype=np.int32)
        for b in range(2):
            pos = np.arange(seqlens[b])
            idx[b, 0, : seqlens[b]] = rng.permutation(table[b, pos // bs] * bs + pos % bs)
        o, lse = ops_ref.mla_sparse_decode(q, kv.reshape(-1, d), idx, None, None, {"softmax_scale": 0.4, "head_dim_v": dv})
        np.testing.assert_allclose(o, o_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-12)


class IndexerTest(unittest.TestCase):
    def test_scores_topk_padding_and_slots(self):
        # 2 heads, Di 2; block_size 2, sequence positions 0..2 at slots 6, 7 (block 3), 2 (block 1)
        k_cache = np.full((4, 2, 2), np.nan)
        k_cache[3, 0], k_cache[3, 1], k_cache[1, 0] = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]
        q = np.array([[[[2.0, -1.0], [-1.0, 3.0]]]])  # [B 1, Sq 1, Hi 2, Di 2]
        weights = np.array([[[1.0, 0.5]]], dtype=np.float32)
        table = np.array([[3, 1]], dtype=np.int32)
        # score = 1 * relu(q0.k) + 0.5 * relu(q1.k): p0 k=(1,0): 2 + 0 = 2; p1 k=(0,1): 0 + 1.5;
        # p2 k=(1,1): 1 + 0.5 * 2 = 2.
        idx, sc, rows = ops_ref.dsa_indexer_topk(q, weights, k_cache, table, np.array([3], dtype=np.int32), {"top_k": 2, "causal": False})
        np.testing.assert_allclose(rows[(0, 0)], [2.0, 1.5, 2.0])
        np.testing.assert_array_equal(idx[0, 0], [6, 2])  # tie 2.0 / 2.0: lower position first
        idx, sc, _ = ops_ref.dsa_indexer_topk(q, weights, k_cache, table, np.array([3], dtype=np.int32), {"top_k": 5, "causal": False})
        np.testing.assert_array_equal(idx[0, 0], [6, 2, 7, -1, -1])
        np.testing.assert_array_equal(sc[0, 0], [2.0, 2.0, 1.5, -np.inf, -np.inf])

    def test_causal_lengths(self):
        rng = np.random.RandomState(12)
        k_cache = rng.standard_normal((2, 4, 3))
        q = rng.standard_normal((1, 3, 2, 3))
        weights = np.ones((1, 3, 2), dtype=np.float32)
        idx, _, rows = ops_ref.dsa_indexer_topk(q, weights, k_cache, np.array([[1, 0]], dtype=np.int32), np.array([2], dtype=np.int32), {"top_k": 4, "causal": True})
        self.assertEqual([rows[(0, i)].size for i in range(3)], [0, 1, 2])
        np.testing.assert_array_equal(idx[0, 0], -1)
        np.testing.assert_array_equal(idx[0, 1], [4, -1, -1, -1])
        got, _ = lowp.dsa_indexer_topk(q, weights, k_cache, np.array([[1, 0]], dtype=np.int32), np.array([2], dtype=np.int32), {"top_k": 4, "causal": True})
        np.testing.assert_array_equal(np.sort(got, axis=-1), np.sort(idx, axis=-1))


class LowpV2Test(unittest.TestCase):
    def test_cache_dequantization_models_agree(self):
        rng = np.random.RandomState(13)
        import mla

        values = rng.standard_normal((6, 576))
        live = np.array([True, True, False, True, True, False])
        rows = mla.fp8_rows(rng, values, live)
        exact = fp8.unpack_ds_v32_rows(rows)
        model = lowp.dequantize_cache(rows, np.float32)
        np.testing.assert_allclose(model[live], exact[live], rtol=2.0**-23)
        self.assertTrue(np.isnan(model[~live]).all() and np.isnan(exact[~live]).all())

    def test_pow2_ceil_models_agree(self):
        rng = np.random.RandomState(14)
        v = (10.0 ** rng.uniform(-8, 8, 20000)).astype(np.float32)
        v = np.concatenate([v, np.float32(2.0) ** np.arange(-20, 20, dtype=np.float32)])
        np.testing.assert_array_equal(lowp.pow2_ceil(v), fp8.pow2_ceil_f32(v))


if __name__ == "__main__":
    unittest.main()
