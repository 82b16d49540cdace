"""The generator's refusal checks: degenerate outputs, tolerance semantics, routing ties.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import unittest

import os
import tempfile
from unittest import mock

import numpy as np

import experts
import generate
import indexer
import route
from case import Case
from cases import V3
from checks import CaseError, check_not_degenerate, default_tolerance, fair_bytes, fair_keyed, record_fairness, relative_gap, within_tolerance


class DegenerateTest(unittest.TestCase):
    def test_rejects_what_proves_nothing(self):
        for bad in (np.zeros(16), np.full(16, 0.5), np.r_[np.ones(8), np.full(8, np.nan)], np.r_[np.zeros(12), np.ones(4)], np.full(16, 1e-4) * np.arange(16)):
            with self.assertRaises(CaseError):
                check_not_degenerate("t", bad)

    def test_accepts_informative_output_and_masks(self):
        v = np.linspace(-1, 1, 16)
        check_not_degenerate("t", v)
        with_empty = np.r_[v, np.full(4, -np.inf)]
        check_not_degenerate("t", with_empty, meaningful=np.r_[np.ones(16, bool), np.zeros(4, bool)])


class ToleranceTest(unittest.TestCase):
    def test_contract_comparison(self):
        self.assertTrue(within_tolerance([1.0019], [1.0], 1e-3, 1e-3))
        self.assertFalse(within_tolerance([1.0021], [1.0], 1e-3, 1e-3))
        self.assertFalse(within_tolerance([np.nan], [np.nan], 1.0, 1.0))
        self.assertTrue(within_tolerance([-np.inf], [-np.inf], 0.0, 0.0))
        self.assertFalse(within_tolerance([np.inf], [-np.inf], 1.0, 1.0))


class RouteTiesTest(unittest.TestCase):
    def test_gap(self):
        self.assertAlmostEqual(relative_gap(np.array([1.0, 0.5, 0.4]), 2), 0.2)
        self.assertEqual(relative_gap(np.array([1.0, 0.5]), 2), np.inf)

    def test_bf16_v3_logits_are_redrawn_until_clear(self):
        # bf16 logits tie often; the builder must still produce a case (it redraws rows).
        case = route.build("bf16", "tie_probe", "probe", 16, 256, V3, 1.5, 0.1)
        self.assertEqual(case.tensors["out.topk_ids"].shape, (16, 8))


class FairnessTest(unittest.TestCase):
    CASE = Case("dsa_indexer_topk", "bf16", "t", "d", {"top_k": 3}, tolerance={"topk_scores": {"atol": 1e-4, "rtol": 1e-4}})

    def test_bytes_compare_exactly_and_name_the_first_difference(self):
        exp = np.arange(10, dtype=np.uint8).reshape(2, 5)
        self.assertEqual(fair_bytes(self.CASE, "kv_fp8", exp.copy(), exp), 0.0)
        got = exp.copy()
        got[1, 2] ^= 1
        got[1, 4] ^= 1
        with self.assertRaisesRegex(CaseError, "byte 7: got 0x06, expected 0x07 \\(2 bytes differ\\)"):
            fair_bytes(self.CASE, "kv_fp8", got, exp)

    def test_keyed_outputs_match_by_id_with_padding(self):
        exp_ids = np.array([[[5, 2, -1]]])
        exp_sc = np.array([[[2.0, 1.0, -np.inf]]])
        ratio = fair_keyed(self.CASE, "topk_indices", "topk_scores", np.array([[[2, 5, -1]]]), np.array([[[1.00005, 2.0, -np.inf]]]), exp_ids, exp_sc)
        self.assertLess(ratio, 1.0)
        with self.assertRaisesRegex(CaseError, "another set"):
            fair_keyed(self.CASE, "topk_indices", "topk_scores", np.array([[[2, 4, -1]]]), exp_sc, exp_ids, exp_sc)
        with self.assertRaisesRegex(CaseError, "off by"):  # the scores swapped between ids
            fair_keyed(self.CASE, "topk_indices", "topk_scores", np.array([[[2, 5, -1]]]), exp_sc, exp_ids, exp_sc)
        with self.assertRaises(CaseError):  # -inf expected: only -inf passes
            fair_keyed(self.CASE, "topk_indices", "topk_scores", exp_ids, np.array([[[2.0, 1.0, 1e30]]]), exp_ids, exp_sc)

    def test_record_refuses_a_ratio_of_one(self):
        case = Case("moe_route", "f32", "t", "d", {})
        with self.assertRaises(CaseError):
            record_fairness(case, [0.2, 1.0])
        self.assertEqual(record_fairness(case, [0.2, 0.5]), 0.5)

    def test_w8a8_default_tolerance(self):
        self.assertEqual(default_tolerance(Case("moe_experts", "bf16", "t", "d", {"activation_quant": "fp8_block128"})), (5e-2, 5e-2))
        self.assertEqual(default_tolerance(Case("moe_experts", "bf16", "t", "d", {"activation_quant": "none"})), (2e-2, 2e-2))

    def test_generate_refuses_a_case_whose_fairness_check_did_not_run(self):
        unchecked = Case("moe_route", "f32", "t", "d", {}, {"out.a": np.zeros(1, np.float32)})
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(generate, "all_cases", lambda _set: [("moe_route", "f32", "t", lambda: unchecked)]):
            with self.assertRaises(SystemExit) as exit_:
                generate.write_all(tmp, "*", False, "v2")
            self.assertIn("fairness self-check did not run", str(exit_.exception))
            self.assertEqual(os.listdir(tmp), [])


class FlipGuardTest(unittest.TestCase):
    def test_midpoint_distance(self):
        # 1.05 rounds to 1.0; the midpoint above is 1.0625 (step 0.125). 0.97 rounds to 1.0 from
        # below: the midpoint is 0.96875 (step 0.0625). 500 saturates: no midpoint above.
        dist, step = experts._midpoint_distance(np.array([1.05, 0.97, -1.05, 500.0, 0.0], dtype=np.float32))
        np.testing.assert_allclose(dist[:3], [0.0125, 0.00125, 0.0125], atol=1e-7)  # f32 inputs
        np.testing.assert_array_equal(step[:3], [0.125, 0.0625, 0.125])
        self.assertEqual(dist[3], np.inf)
        self.assertEqual((dist[4], step[4]), (2.0**-10, 2.0**-9))

    def test_budget_counts_only_codes_near_a_midpoint(self):
        x = np.zeros(4, dtype=np.float32)
        x[0] = 1.0
        w13 = np.zeros((1, 2, 4))
        w13[0, :, 0] = 1.0  # g = u = x0^ = 1 -> a = silu(1) = 0.7311
        w2 = np.ones((1, 3, 1))
        opts = {"activation_quant": "fp8_block128", "activation_scale": "f32", "swiglu_limit": None}
        budget, fragile = experts._token_flip_budget(x, w13, w2, np.array([0]), np.array([1.0]), opts)
        # a is its group's amax: a / sc = 448 exactly, far from any midpoint
        np.testing.assert_array_equal(budget, 0.0)
        self.assertFalse(fragile)
        x[1] = np.float32(1.0) / np.float32(448.0) * np.float32(1.0625)  # an x code on a tie
        self.assertTrue(experts._token_flip_budget(x, w13, w2, np.array([0]), np.array([1.0]), opts)[1])

    def test_indexer_gap_needs_both_margins(self):
        self.assertTrue(indexer.topk_gap_ok(np.array([3.0, 2.0, 1.0]), 3))
        self.assertTrue(indexer.topk_gap_ok(np.array([3.0, 2.0, 1.0]), 2))
        self.assertFalse(indexer.topk_gap_ok(np.array([3.0, 2.0, 1.9995]), 2))  # relative gap 2.5e-4
        self.assertFalse(indexer.topk_gap_ok(np.array([10.0, 1e-5, -1e-5]), 2))  # relative 2, absolute 2e-6 of 10


if __name__ == "__main__":
    unittest.main()
