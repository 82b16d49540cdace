"""Hand-worked checks of the float64 references and of the writer.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import math
import unittest

import ml_dtypes
import numpy as np

import ops_ref
from writer import case_bytes, to_run_dtype


def logit(p):
    """Inverse sigmoid, to write routing tests in terms of scores."""
    return math.log(p / (1 - p))


class RouteTest(unittest.TestCase):
    # 8 experts in 4 groups of 2; the bias pushes expert 6 down from 0.8 to 0.3.
    S = [0.9, 0.1, 0.6, 0.5, 0.2, 0.7, 0.8, 0.05]
    BIAS = np.array([0, 0, 0, 0, 0, 0, -0.5, 0], dtype=np.float32)
    PARAMS = {"score_func": "sigmoid", "top_k": 2, "n_group": 4, "topk_group": 2, "renormalize": True, "routed_scaling_factor": 2.0}

    def route(self, group_select):
        logits = np.array([[logit(p) for p in self.S]])
        return ops_ref.moe_route(logits, self.BIAS, dict(self.PARAMS, group_select=group_select))

    def test_top2_sum_groups(self):
        # sel = .9 .1 | .6 .5 | .2 .7 | .3 .05 -> sums 1.0, 1.1, 0.9, 0.35: keep groups 1, 0.
        ids, w = self.route("top2_sum")
        self.assertEqual(sorted(ids[0]), [0, 2])
        np.testing.assert_allclose(w[0], [0.9 / 1.5 * 2, 0.6 / 1.5 * 2], rtol=1e-12)

    def test_max_groups(self):
        # maxima .9, .6, .7, .3: keep groups 0 and 2 -> experts 0 (.9) and 5 (.7).
        ids, w = self.route("max")
        self.assertEqual(list(ids[0]), [0, 5])
        np.testing.assert_allclose(w[0], [0.9 / 1.6 * 2, 0.7 / 1.6 * 2], rtol=1e-12)

    def test_softmax_no_renorm_scaled(self):
        logits = np.log(np.array([[1.0, 2.0, 3.0, 4.0]]))
        params = {"score_func": "softmax", "top_k": 2, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": False, "routed_scaling_factor": 16.0}
        ids, w = ops_ref.moe_route(logits, None, params)
        self.assertEqual(list(ids[0]), [3, 2])
        np.testing.assert_allclose(w[0], [6.4, 4.8], rtol=1e-12)


class ExpertsTest(unittest.TestCase):
    def test_tiny_swiglu(self):
        silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
        x = np.array([[1.0, 2.0]] * 3)
        w13 = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [E=2, 2I=2, H=2]
        w2 = np.array([[[1.0], [-1.0]], [[2.0], [0.0]]])  # [E=2, H=2, I=1]
        ids = np.array([[0, -1], [-1, -1], [1, 0]], dtype=np.int32)
        weights = np.array([[0.5, 0.9], [1.0, 1.0], [1.0, 1.0]], dtype=np.float32)
        y = ops_ref.moe_experts(x, w13, w2, ids, weights)
        a0 = silu(1.0) * 2.0  # expert 0: gate 1, up 2
        a1 = silu(2.0) * 1.0  # expert 1: gate 2, up 1
        np.testing.assert_allclose(y, [[0.5 * a0, -0.5 * a0], [0, 0], [2 * a1 + a0, -a0]], rtol=1e-12)


class MlaTest(unittest.TestCase):
    @staticmethod
    def dense_reference(q, kv, table, seqlens, scale, causal, d_v):
        """Element-by-element attention with explicit page arithmetic (second formulation)."""
        b_n, s_q, h_q, d = q.shape
        bs, h_kv = kv.shape[1], kv.shape[2]
        o = np.zeros((b_n, s_q, h_q, d_v))
        lse = np.full((b_n, h_q, s_q), -math.inf)
        for b in range(b_n):
            for i in range(s_q):
                n = seqlens[b] - s_q + i + 1 if causal else seqlens[b]
                for h in range(h_q):
                    rows = [kv[table[b][p // bs], p % bs, h * h_kv // h_q] for p in range(max(n, 0))]
                    logits = [scale * sum(float(q[b, i, h, c]) * float(r[c]) for c in range(d)) for r in rows]
                    if not logits:
                        continue
                    z = sum(math.exp(v) for v in logits)
                    lse[b, h, i] = math.log(z)
                    for c in range(d_v):
                        o[b, i, h, c] = sum(math.exp(v) / z * float(r[c]) for v, r in zip(logits, rows))
        return o, lse

    def test_paged_matches_dense(self):
        rng = np.random.RandomState(7)
        bs, h_kv, h_q, d, d_v = 4, 2, 4, 6, 5
        kv = rng.standard_normal((6, bs, h_kv, d))
        table = np.array([[5, 2, 2147480000], [0, 3, 1]], dtype=np.int32)
        seqlens = np.array([6, 10], dtype=np.int32)
        q = rng.standard_normal((2, 3, h_q, d))
        for causal in (False, True):
            params = {"softmax_scale": 0.3, "causal": causal, "head_dim_v": d_v}
            o, lse = ops_ref.mla_decode(q, kv, table, seqlens, params)
            eo, else_ = self.dense_reference(q, kv, table, seqlens, 0.3, causal, d_v)
            np.testing.assert_allclose(o, eo, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(lse, else_, rtol=1e-12)

    def test_single_position_and_empty_causal_query(self):
        kv = np.full((2, 4, 2, 3), np.nan)
        kv[1, 0] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
        q = np.ones((1, 2, 4, 3))
        table = np.array([[1, 2147480000]], dtype=np.int32)
        params = {"softmax_scale": 0.5, "causal": True, "head_dim_v": 2}
        o, lse = ops_ref.mla_decode(q, kv, table, np.array([1], dtype=np.int32), params)
        # seqlen 1, Sq 2 causal: query 0 sees nothing, query 1 sees position 0 only.
        np.testing.assert_array_equal(o[0, 0], 0.0)
        np.testing.assert_array_equal(lse[0, :, 0], -np.inf)
        # heads 0,1 use kv head 0; heads 2,3 use kv head 1
        np.testing.assert_allclose(o[0, 1], [[1, 2], [1, 2], [4, 5], [4, 5]])
        np.testing.assert_allclose(lse[0, :, 1], [3.0, 3.0, 7.5, 7.5])


class WriterTest(unittest.TestCase):
    def test_bf16_round_to_nearest_even(self):
        halfway = [1 + 2**-8, 1 + 3 * 2**-8]  # ties: to 1.0 and to 1 + 2^-6
        got = to_run_dtype(halfway, "bf16").astype(np.float64)
        self.assertEqual(to_run_dtype(halfway, "bf16").dtype, ml_dtypes.bfloat16)
        np.testing.assert_array_equal(got, [1.0, 1 + 2**-6])

    def test_bytes_are_reproducible(self):
        tensors = {"in.a": np.arange(3, dtype=np.float32), "out.b": np.ones(2, dtype=np.int32)}
        blobs = {case_bytes(tensors, "moe_experts", {}, "d", {"b": {"atol": 0.1, "rtol": 0.1}}) for _ in range(20)}
        self.assertEqual(len(blobs), 1)
        self.assertIn(b'{"__metadata__":{"description":"d","op":"moe_experts","params":"{}"', blobs.pop())


if __name__ == "__main__":
    unittest.main()
