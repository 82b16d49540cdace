"""Schema check of the committed golden set against shared/CONTRACT.md's file format.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import json
import os
import unittest

from safetensors import deserialize

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")
RUN_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
PARAM_KEYS = {
    "moe_route": {"score_func", "top_k", "n_group", "topk_group", "group_select", "renormalize", "routed_scaling_factor"},
    "moe_experts": set(),
    "mla_decode": {"softmax_scale", "causal", "head_dim_v"},
}


def expected_dtypes(op, run):
    """Tensor name -> dtype per the contract (in.bias optional for moe_route)."""
    if op == "moe_route":
        return {"in.logits": run, "in.bias": "F32", "out.topk_ids": "I32", "out.topk_weights": "F32"}
    if op == "moe_experts":
        return {"in.x": run, "in.w13": run, "in.w2": run, "in.topk_ids": "I32", "in.topk_weights": "F32", "out.y": "F32"}
    return {"in.q": run, "in.kv_cache": run, "in.block_table": "I32", "in.cache_seqlens": "I32", "out.o": "F32", "out.lse": "F32"}


def read_case(path):
    """(metadata, {name: (dtype, shape)}) of one case file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    return meta, {name: (v["dtype"], v["shape"]) for name, v in deserialize(blob)}


class GoldenFormatTest(unittest.TestCase):
    def test_every_case_matches_the_contract(self):
        paths = []
        for dirpath, _, files in os.walk(GOLDEN):
            paths += [os.path.join(dirpath, f) for f in files]
        self.assertGreater(len(paths), 0, "no golden cases found")
        for path in sorted(paths):
            with self.subTest(case=os.path.relpath(path, GOLDEN)):
                op, run = os.path.relpath(path, GOLDEN).split(os.sep)[:2]
                meta, tensors = read_case(path)
                self.assertEqual(meta["op"], op)
                self.assertEqual(set(json.loads(meta["params"])), PARAM_KEYS[op])
                self.assertTrue(set(meta) <= {"op", "params", "source", "tolerance", "description"})
                want = expected_dtypes(op, RUN_DTYPE[run])
                self.assertTrue(set(tensors) <= set(want), sorted(set(tensors) - set(want)))
                self.assertEqual(set(want) - set(tensors) - {"in.bias"}, set())
                for name, (dtype, _) in tensors.items():
                    self.assertEqual(dtype, want[name], name)
                self.check_shapes(op, tensors, json.loads(meta["params"]))

    def check_shapes(self, op, t, params):
        shape = {name: v[1] for name, v in t.items()}
        if op == "moe_route":
            tokens, experts = shape["in.logits"]
            self.assertEqual(shape["out.topk_ids"], [tokens, params["top_k"]])
            self.assertEqual(shape["out.topk_weights"], [tokens, params["top_k"]])
            self.assertEqual(shape.get("in.bias", [experts]), [experts])
        elif op == "moe_experts":
            tokens, hidden = shape["in.x"]
            experts, two_i, _ = shape["in.w13"]
            self.assertEqual(shape["in.w13"], [experts, two_i, hidden])
            self.assertEqual(shape["in.w2"], [experts, hidden, two_i // 2])
            self.assertEqual(shape["in.topk_ids"], shape["in.topk_weights"])
            self.assertEqual(shape["out.y"], [tokens, hidden])
        else:
            b, s_q, h_q, d_qk = shape["in.q"]
            self.assertEqual(shape["in.kv_cache"][3], d_qk)
            self.assertEqual(h_q % shape["in.kv_cache"][2], 0)
            self.assertEqual(shape["in.block_table"][0], b)
            self.assertEqual(shape["in.cache_seqlens"], [b])
            self.assertEqual(shape["out.o"], [b, s_q, h_q, params["head_dim_v"]])
            self.assertEqual(shape["out.lse"], [b, h_q, s_q])


if __name__ == "__main__":
    unittest.main()
