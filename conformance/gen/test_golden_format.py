"""Schema check of golden sets against the file format of docs/conformance.md (v1 and v2): the
committed conformance/golden set, and the v2 set generated into a temporary directory.

Run: python3 -m unittest discover -s conformance/gen -p 'test_*.py'
"""

import json
import os
import tempfile
import unittest

from safetensors import deserialize

import generate
from cases import all_cases

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")
RUN_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
# The v2 set must stay small (the brief: < 25 MB).
V2_BUDGET_BYTES = 25_000_000
ROUTE_KEYS = {"score_func", "top_k", "n_group", "topk_group", "group_select", "renormalize", "routed_scaling_factor"}
# op -> (required params, optional params)
PARAM_KEYS = {
    "moe_route": (ROUTE_KEYS, set()),
    "moe_experts": (set(), {"activation_quant", "activation_scale", "swiglu_limit"}),
    "mla_decode": ({"softmax_scale", "causal", "head_dim_v"}, {"kv_format"}),
    "mla_kv_quantize": ({"kv_format"}, set()),
    "mla_sparse_decode": ({"softmax_scale", "head_dim_v"}, {"kv_format"}),
    "dsa_indexer_topk": ({"top_k", "causal"}, set()),
    "mla_cache_write": ({"kv_format"}, set()),
}


def expected_dtypes(op, run, params, tensors):
    """(required {name: dtype}, optional {name: dtype}) per the contract."""
    fp8_cache = params.get("kv_format") == "fp8_ds_v32"
    if op == "moe_route":
        return {"in.logits": run, "out.topk_ids": "I32", "out.topk_weights": "F32"}, {"in.bias": "F32", "in.input_ids": "I32", "in.tid2eid": "I32"}
    if op == "moe_experts":
        w = tensors.get("in.w13", (run,))[0]
        req = {"in.x": run, "in.w13": w, "in.w2": w, "in.topk_ids": "I32", "in.topk_weights": "F32", "out.y": "F32"}
        if w == "F8_E4M3":
            req.update({"in.w13_scale": "F32", "in.w2_scale": "F32"})
        else:
            assert w == run, f"weights {w} in a {run} case"
        # Shared experts (v2): run-dtype weights, both or neither, beside run-dtype routed ones.
        if "in.shared_w13" in tensors or "in.shared_w2" in tensors:
            assert w == run, f"shared experts beside {w} routed weights"
            req.update({"in.shared_w13": run, "in.shared_w2": run})
        return req, {}
    if op == "mla_decode":
        return {"in.q": run, "in.kv_cache": "U8" if fp8_cache else run, "in.block_table": "I32", "in.cache_seqlens": "I32", "out.o": "F32", "out.lse": "F32"}, {}
    if op == "mla_kv_quantize":
        return {"in.kv": run, "out.kv_fp8": "U8"}, {}
    if op == "mla_cache_write":
        cache = "U8" if fp8_cache else run
        return {"in.kv": run, "in.slot_mapping": "I32", "in.kv_cache": cache, "out.kv_cache": cache}, {}
    if op == "mla_sparse_decode":
        req = {"in.q": run, "in.kv_cache": "U8" if fp8_cache else run, "in.indices": "I32", "out.o": "F32", "out.lse": "F32"}
        return req, {"in.topk_length": "I32", "in.attn_sink": "F32"}
    assert op == "dsa_indexer_topk", op
    req = {"in.q": run, "in.weights": "F32", "in.k_cache": run, "in.block_table": "I32", "in.cache_seqlens": "I32", "out.topk_indices": "I32", "out.topk_scores": "F32"}
    return req, {}


def read_case(path):
    """(metadata, {name: (dtype, shape)}) of one case file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    return meta, {name: (v["dtype"], v["shape"]) for name, v in deserialize(blob)}


def case_paths(root):
    paths = []
    for dirpath, _, files in os.walk(root):
        paths += [os.path.join(dirpath, f) for f in files]
    return sorted(paths)


def ceil128(n):
    return -(-n // 128)


class SchemaMixin:
    def check_dir(self, root):
        paths = case_paths(root)
        self.assertGreater(len(paths), 0, f"no golden cases in {root}")
        for path in paths:
            with self.subTest(case=os.path.relpath(path, root)):
                op, run = os.path.relpath(path, root).split(os.sep)[:2]
                meta, tensors = read_case(path)
                self.assertEqual(meta["op"], op)
                params = json.loads(meta["params"])
                required, optional = PARAM_KEYS[op]
                self.assertTrue(required <= set(params) <= required | optional, sorted(params))
                self.assertTrue(set(meta) <= {"op", "params", "source", "tolerance", "description"})
                if "tolerance" in meta:
                    outs = {n[4:] for n in tensors if n.startswith("out.")}
                    self.assertTrue(set(json.loads(meta["tolerance"])) <= outs)
                req, opt = expected_dtypes(op, RUN_DTYPE[run], params, tensors)
                self.assertEqual(set(req) - set(tensors), set())
                self.assertTrue(set(tensors) <= set(req) | set(opt), sorted(set(tensors) - set(req) - set(opt)))
                for name, (dtype, _) in tensors.items():
                    self.assertEqual(dtype, {**req, **opt}[name], name)
                self.check_shapes(op, {name: v[1] for name, v in tensors.items()}, params)

    def check_shapes(self, op, shape, params):
        if op == "moe_route":
            tokens, experts = shape["in.logits"]
            self.assertEqual(shape["out.topk_ids"], [tokens, params["top_k"]])
            self.assertEqual(shape["out.topk_weights"], [tokens, params["top_k"]])
            self.assertEqual(shape.get("in.bias", [experts]), [experts])
            self.assertEqual("in.input_ids" in shape, "in.tid2eid" in shape)
            if "in.input_ids" in shape:
                self.assertNotIn("in.bias", shape)
                self.assertEqual(shape["in.input_ids"], [tokens])
                self.assertEqual(shape["in.tid2eid"][1], params["top_k"])
        elif op == "moe_experts":
            tokens, hidden = shape["in.x"]
            experts, two_i, _ = shape["in.w13"]
            self.assertEqual(shape["in.w13"], [experts, two_i, hidden])
            self.assertEqual(shape["in.w2"], [experts, hidden, two_i // 2])
            if "in.w13_scale" in shape:
                self.assertEqual(shape["in.w13_scale"], [experts, ceil128(two_i), ceil128(hidden)])
                self.assertEqual(shape["in.w2_scale"], [experts, ceil128(hidden), ceil128(two_i // 2)])
            self.assertEqual(shape["in.topk_ids"], shape["in.topk_weights"])
            self.assertEqual(shape["out.y"], [tokens, hidden])
            if "in.shared_w13" in shape:
                shared, two_is, _ = shape["in.shared_w13"]
                self.assertEqual(shape["in.shared_w13"], [shared, two_is, hidden])
                self.assertEqual(shape["in.shared_w2"], [shared, hidden, two_is // 2])
        elif op == "mla_kv_quantize":
            n, width = shape["in.kv"]
            self.assertEqual((width, shape["out.kv_fp8"]), (576, [n, 656]))
        elif op == "mla_cache_write":
            n, d_qk = shape["in.kv"]
            num_blocks, block_size, heads, width = shape["in.kv_cache"]
            self.assertEqual(shape["in.slot_mapping"], [n])
            self.assertEqual(shape["out.kv_cache"], shape["in.kv_cache"])
            self.assertEqual(heads, 1)
            if params["kv_format"] == "fp8_ds_v32":
                self.assertEqual((d_qk, width), (576, 656))
            else:
                self.assertEqual(width, d_qk)
        elif op == "dsa_indexer_topk":
            b, s_q, h_i, d_i = shape["in.q"]
            self.assertEqual(shape["in.weights"], [b, s_q, h_i])
            self.assertEqual(shape["in.k_cache"][2], d_i)
            self.assertEqual(shape["in.block_table"][0], b)
            self.assertEqual(shape["in.cache_seqlens"], [b])
            for out in ("out.topk_indices", "out.topk_scores"):
                self.assertEqual(shape[out], [b, s_q, params["top_k"]])
        else:  # mla_decode, mla_sparse_decode
            b, s_q, h_q, d_qk = shape["in.q"]
            cache = shape["in.kv_cache"]
            if params.get("kv_format") == "fp8_ds_v32":
                self.assertEqual((d_qk, params["head_dim_v"], cache[2], cache[3]), (576, 512, 1, 656))
            else:
                self.assertEqual(cache[3], d_qk)
            self.assertEqual(h_q % cache[2], 0)
            if op == "mla_decode":
                self.assertEqual(shape["in.block_table"][0], b)
                self.assertEqual(shape["in.cache_seqlens"], [b])
            else:
                self.assertEqual(cache[2], 1)
                self.assertEqual(shape["in.indices"][:2], [b, s_q])
                self.assertEqual(shape.get("in.topk_length", [b]), [b])
                self.assertEqual(shape.get("in.attn_sink", [h_q]), [h_q])
            self.assertEqual(shape["out.o"], [b, s_q, h_q, params["head_dim_v"]])
            self.assertEqual(shape["out.lse"], [b, h_q, s_q])


class GoldenFormatTest(SchemaMixin, unittest.TestCase):
    def test_every_committed_case_matches_the_contract(self):
        self.check_dir(GOLDEN)


class V2SetTest(SchemaMixin, unittest.TestCase):
    """Generates the v2 set once (a few seconds): every case passes its own checks on the way."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.count = generate.write_all(cls.tmp.name, "*", False, "v2")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_every_v2_case_matches_the_contract(self):
        self.check_dir(self.tmp.name)

    def test_size_budget_and_count(self):
        paths = case_paths(self.tmp.name)
        self.assertEqual(len(paths), self.count)
        self.assertLess(sum(os.path.getsize(p) for p in paths), V2_BUDGET_BYTES)

    def test_every_v2_op_and_dtype_present(self):
        found = {tuple(os.path.relpath(p, self.tmp.name).split(os.sep)[:2]) for p in case_paths(self.tmp.name)}
        for op in PARAM_KEYS:
            for run in ("f16", "bf16") if op == "mla_decode" else RUN_DTYPE:
                self.assertIn((op, run), found)

    def test_v2_names_do_not_collide_with_v1(self):
        v1 = {(op, dt, name) for op, dt, name, _ in all_cases("v1")}
        v2 = {(op, dt, name) for op, dt, name, _ in all_cases("v2")}
        self.assertEqual(v1 & v2, set())
        self.assertEqual(len(all_cases("all")), len(v1) + len(v2))

    def test_regeneration_is_byte_identical(self):
        with tempfile.TemporaryDirectory() as again:
            generate.write_all(again, "*/bf16/*", False, "v2")
            for p in case_paths(again):
                rel = os.path.relpath(p, again)
                with open(p, "rb") as a, open(os.path.join(self.tmp.name, rel), "rb") as b:
                    self.assertEqual(a.read(), b.read(), rel)


if __name__ == "__main__":
    unittest.main()
