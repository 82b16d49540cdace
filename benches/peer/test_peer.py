"""The numpy peer must compute the contract's ops: it is checked against the golden set, so
`moemla bench --peer numpy` compares our time with a correct implementation's time."""
import glob
import os
import unittest

import numpy as np
from safetensors import safe_open

import peer

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "conformance", "golden")
GOLDEN_V2 = os.path.join(os.path.dirname(__file__), "..", "..", "conformance", "golden-v2")
# The moe_experts inputs the peer knows (routed experts, run dtype or FP8 with scales).
EXPERTS_INPUTS = {"x", "w13", "w2", "topk_ids", "topk_weights", "w13_scale", "w2_scale"}
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


class PeerMatchesFp8ExpertGoldens(unittest.TestCase):
    """Contract v2 experts (FP8 w8a16 and w8a8 with f32 and ue8m0 scales, the SwiGLU
    clamp) from golden-v2, read by the peer's own safetensors reader."""

    def test_every_v2_experts_case(self):
        files = sorted(glob.glob(os.path.join(GOLDEN_V2, "moe_experts", "*", "*.safetensors")))
        fp8 = 0
        for path in files:
            meta, arrays = peer.read_file(path)
            inputs = {k[3:] for k in arrays if k.startswith("in.")}
            if not inputs <= EXPERTS_INPUTS:
                continue  # features the peer does not time (e.g. shared experts)
            fp8 += "w13_scale" in inputs
            with self.subTest(case=os.path.relpath(path, GOLDEN_V2)):
                op, params, tensors = peer.load(path)
                got = peer.run(op, params, tensors)
                tol = TOL[os.path.basename(os.path.dirname(path)).upper()]
                want = arrays["out.y"].astype(np.float32)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        self.assertGreaterEqual(fp8, 4, "golden-v2 lost its FP8 experts cases")

    def test_fp8_dequant_uses_each_block_s_scale(self):
        codes = np.array([[0x38, 0x40], [0xB8, 0x00]], dtype=np.uint8).view(peer.ml_dtypes.float8_e4m3fn)
        got = peer.dequant(np.tile(codes, (65, 65))[:130, :129], np.array([[1.0, 2.0], [4.0, 8.0]], np.float32))
        # 0x38 = 1.0, 0x40 = 2.0, 0xB8 = -1.0: block (r // 128, c // 128) scales.
        self.assertEqual(got[0, 0], 1.0)
        self.assertEqual(got[0, 128], 2.0 * 1.0)
        self.assertEqual(got[129, 1], 4.0 * 0.0)
        self.assertEqual(got[128, 128], 8.0 * 1.0)
        self.assertEqual(got[1, 0], -1.0)


if __name__ == "__main__":
    unittest.main()
