"""The numpy peer must compute the contract's ops: it is checked against the golden set, so
`moemla bench --peer numpy` compares our time with a correct implementation's time."""
import glob
import os
import unittest

import numpy as np
from safetensors import safe_open

import peer

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "conformance", "golden")
TOL = {"F32": 1e-4, "F16": 2e-3, "BF16": 2e-2}  # contract defaults, atol = rtol


def expected(path):
    with safe_open(path, "np") as f:
        out = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("out.")}
        run_arg = {"moe_route": "in.logits", "moe_experts": "in.x", "mla_decode": "in.q"}
        run_dtype = str(f.get_slice(run_arg[f.metadata()["op"]]).get_dtype())
    return out, run_dtype


class PeerMatchesGoldens(unittest.TestCase):
    def test_every_golden_case(self):
        files = sorted(glob.glob(os.path.join(GOLDEN, "**", "*.safetensors"), recursive=True))
        self.assertGreater(len(files), 0, "no golden files found")
        for path in files:
            with self.subTest(case=os.path.relpath(path, GOLDEN)):
                op, params, tensors = peer.load(path)
                got = peer.run(op, params, tensors)
                exp, run_dtype = expected(path)
                tol = TOL["F32"] if op == "moe_route" else TOL[run_dtype]
                if op == "moe_route":
                    ids, weights = got
                    for row in range(ids.shape[0]):
                        self.assertEqual(set(ids[row]), set(exp["topk_ids"][row]))
                        by_id = dict(zip(exp["topk_ids"][row], exp["topk_weights"][row]))
                        want = np.array([by_id[i] for i in ids[row]])
                        np.testing.assert_allclose(weights[row], want, rtol=tol, atol=tol)
                elif op == "moe_experts":
                    np.testing.assert_allclose(got, exp["y"], rtol=tol, atol=tol)
                else:
                    o, lse = got
                    np.testing.assert_allclose(o, exp["o"], rtol=tol, atol=tol)
                    np.testing.assert_allclose(lse, exp["lse"], rtol=tol, atol=tol)


if __name__ == "__main__":
    unittest.main()
