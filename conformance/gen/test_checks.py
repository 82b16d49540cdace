"""The generator's refusal checks: degenerate outputs, tolerance semantics, routing ties.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import unittest

import numpy as np

import route
from cases import V3
from checks import CaseError, check_not_degenerate, relative_gap, within_tolerance


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


if __name__ == "__main__":
    unittest.main()
