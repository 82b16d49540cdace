"""The torch peer without torch: its safetensors header reader, the golden cases it checks
itself on, tolerances, the bench case names it shares with `moemla bench`, the ours-vs-torch
table, its exit status where torch cannot be imported (the GPU check reads that status), and
its two reference functions (mla_decode `bmm`, moe_experts `loop`) run through a small numpy
stand-in for the torch calls they make, against every golden case. On the GPU machine the
peer checks the same functions, in torch and in the run dtype, before anything is timed."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import ml_dtypes
import numpy as np
from safetensors import safe_open

import peer
import torch_peer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "conformance", "golden")
GOLDEN_V2 = os.path.join(HERE, "..", "..", "conformance", "golden-v2")
SCRIPT = os.path.join(HERE, "torch_peer.py")


class HeaderAndCases(unittest.TestCase):
    def test_header_reader_agrees_with_safetensors(self):
        files = sorted(glob.glob(os.path.join(GOLDEN, "**", "*.safetensors"), recursive=True))
        self.assertGreater(len(files), 0)
        for path in files:
            meta, tensors = torch_peer.read_header(path)
            with safe_open(path, "np") as f:
                self.assertEqual(meta, f.metadata())
                self.assertEqual(sorted(tensors), sorted(f.keys()))
                for k in f.keys():
                    s = f.get_slice(k)
                    self.assertEqual(tensors[k], (s.get_dtype(), s.get_shape()), (path, k))

    def test_short_file_is_an_error(self):
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(b"\x01\x02")
            f.flush()
            with self.assertRaises(ValueError):
                torch_peer.read_header(f.name)

    def test_golden_cases_are_every_mla_and_experts_file_with_its_run_dtype(self):
        cases = torch_peer.golden_cases([GOLDEN])
        want = sorted(glob.glob(os.path.join(GOLDEN, "mla_decode", "*", "*.safetensors"))
                      + glob.glob(os.path.join(GOLDEN, "moe_experts", "*", "*.safetensors")))
        self.assertEqual(sorted(c["path"] for c in cases), want)
        for c in cases:
            # The committed layout is <op>/<dtype>/<case>: the run dtype read from the header
            # must be the folder's.
            self.assertEqual(c["dtype"].lower(), os.path.basename(os.path.dirname(c["path"])))
            self.assertEqual(c["op"], os.path.basename(os.path.dirname(os.path.dirname(c["path"]))))
            self.assertEqual(c["outputs"], ["lse", "o"] if c["op"] == "mla_decode" else ["y"])

    def test_v2_cases_are_the_ones_the_peer_runs(self):
        # Dense-cache decode, run-dtype and FP8 w8a16 experts (routed only); never the FP8
        # cache, w8a8 or inputs the peer does not know.
        cases = torch_peer.golden_cases([GOLDEN_V2])
        self.assertGreater(len(cases), 0)
        fp8 = 0
        for c in cases:
            meta, tensors = torch_peer.read_header(c["path"])
            params = json.loads(meta["params"])
            self.assertNotEqual(params.get("kv_format"), "fp8_ds_v32", c["path"])
            self.assertNotEqual(params.get("activation_quant"), "fp8_block128", c["path"])
            if c["op"] == "moe_experts":
                self.assertLessEqual({k for k in tensors if k.startswith("in.")}, torch_peer.EXPERTS_INPUTS)
                fp8 += "in.w13_scale" in tensors
        self.assertGreaterEqual(fp8, 3, "the FP8 w8a16 cases are checked")
        left_out = [p for p in glob.glob(os.path.join(GOLDEN_V2, "moe_experts", "*", "*.safetensors"))
                    if "w8a8" in p]
        self.assertGreater(len(left_out), 0)
        self.assertFalse(set(left_out) & {c["path"] for c in cases})

    def test_a_missing_golden_path_is_an_error(self):
        with self.assertRaises(ValueError):
            torch_peer.golden_cases([os.path.join(GOLDEN, "no-such-dir")])


class Tolerance(unittest.TestCase):
    def test_default_by_run_dtype(self):
        self.assertEqual(torch_peer.tolerance("BF16", None).get_pair("o"), (2e-2, 2e-2))
        self.assertEqual(torch_peer.tolerance("F16", None).get_pair("y"), (2e-3, 2e-3))
        self.assertEqual(torch_peer.tolerance("F32", None).get_pair("lse"), (1e-4, 1e-4))

    def test_a_case_may_tighten_never_loosen(self):
        t = torch_peer.tolerance("F16", '{"o": {"atol": 1e-5, "rtol": 1.0}}')
        self.assertEqual(t.get_pair("o"), (1e-5, 2e-3))
        self.assertEqual(t.get_pair("lse"), (2e-3, 2e-3))


class BenchNamesAndTable(unittest.TestCase):
    def test_case_names_are_moemla_bench_s(self):
        # `moemla bench --device-shapes` prints these (benches/src/case.rs, Display).
        names = [n for _, n, _ in torch_peer.bench_shapes(quick=False)]
        self.assertEqual(names, [
            "mla_decode bf16 b=128 s_q=1 h_q=16 sk=4096 blk=64",
            "mla_decode bf16 b=128 s_q=2 h_q=128 sk=4096 blk=64",
            "moe_experts bf16 T=16 H=7168 I=2048 E=256 k=8",
            "moe_experts bf16 T=4096 H=7168 I=2048 E=256 k=8",
        ])

    def test_table_uses_torch_s_fastest_variant(self):
        ours = [{"rows": [
            {"case": "A", "time_s": 0.002, "roofline_ratio": 0.5},
            {"case": "B", "time_s": 0.001, "roofline_ratio": None},
        ]}]
        torch_rows = [
            {"case": "A", "variant": "loop", "median_s": 0.008},
            {"case": "A", "variant": "grouped", "median_s": 0.004},
            {"case": "B", "variant": "loop", "median_s": None, "error": "x"},
        ]
        lines = torch_peer.compare_rows(ours, torch_rows)
        self.assertEqual(len(lines), 3)
        a, b = lines[1].split(), lines[2].split()
        self.assertEqual(a[:5], ["A", "2.000", "4.000", "0.50x", "50%"])
        self.assertIn("grouped", lines[1])
        self.assertEqual(b, ["B", "1.000", "-", "-", "-"])


class ExitStatus(unittest.TestCase):
    def run_peer(self, *args, env_extra=None):
        env = dict(os.environ, **(env_extra or {}))
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                              env=env, timeout=120)

    def test_exit_3_when_torch_cannot_be_imported(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "torch.py"), "w") as f:
                f.write(textwrap.dedent("""\
                    raise ImportError("no torch in this test")
                """))
            r = self.run_peer("--golden", GOLDEN, env_extra={"PYTHONPATH": d})
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("torch not importable: ImportError: no torch in this test", r.stdout)

    def test_bench_cases_exit_3_without_torch_so_the_bench_skips_the_peer(self):
        # `moemla bench --peer torch` reads exit 3 as "torch unavailable" and says so.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "torch.py"), "w") as f:
                f.write('raise ImportError("no torch in this test")\n')
            case = sorted(glob.glob(os.path.join(GOLDEN, "mla_decode", "*", "*.safetensors")))[0]
            r = self.run_peer("--device", "cpu", "--cases", "--golden", GOLDEN, case,
                              env_extra={"PYTHONPATH": d})
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("torch not importable", r.stdout)
        self.assertNotIn("median_s", r.stdout)

    def test_case_files_need_cases(self):
        r = self.run_peer("--golden", GOLDEN, "x.safetensors")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("--cases", r.stderr)

    def test_exit_2_on_a_missing_golden_dir_before_torch_is_imported(self):
        r = self.run_peer("--golden", os.path.join(GOLDEN, "no-such-dir"))
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("does not exist", r.stderr)


class _T:
    """A torch-like tensor over a numpy array: just the operations the peer's reference
    functions use, in float64, so that their indexing, masking and layout can be checked
    against the goldens where torch is absent. Precision is torch's business, on the GPU."""

    def __init__(self, a, dtype=None):
        self.a = np.asarray(a)
        self.dtype = dtype or ("bool" if self.a.dtype == bool else
                               "int" if self.a.dtype.kind in "iu" else "float")

    shape = property(lambda self: self.a.shape)
    device = "cpu"

    def reshape(self, *s):
        return _T(self.a.reshape(*s), self.dtype)

    view = reshape

    def permute(self, *axes):
        return _T(self.a.transpose(axes), self.dtype)

    def transpose(self, i, j):
        return _T(np.swapaxes(self.a, i, j), self.dtype)

    def t(self):
        return _T(self.a.T, self.dtype)

    def long(self):
        return _T(self.a.astype(np.int64))

    def int(self):
        return self.long()

    def float(self):
        return _T(self.a.astype(np.float64), "float")

    def to(self, dtype):
        return _T(self.a.astype(np.float64), dtype)

    def clamp(self, lo=None, hi=None, max=None):  # noqa: A002 (torch's keyword)
        return _T(np.clip(self.a, lo, hi if max is None else max), self.dtype)

    def repeat_interleave(self, n, dim):
        return _T(np.repeat(self.a, n, axis=dim), self.dtype)

    def masked_fill(self, mask, v):
        return _T(np.where(mask.a, v, self.a), self.dtype)

    def amax(self, dim, keepdim=False):
        return _T(self.a.max(axis=dim, keepdims=keepdim), self.dtype)

    def sum(self, dim, keepdim=False):
        return _T(self.a.sum(axis=dim, keepdims=keepdim), self.dtype)

    def squeeze(self, dim):
        return _T(np.squeeze(self.a, dim), self.dtype)

    def expand(self, *s):
        return _T(np.broadcast_to(self.a, s), self.dtype)

    def any(self):
        return _T(self.a.any())

    def __bool__(self):
        return bool(self.a)

    def tolist(self):
        return self.a.tolist()

    def index_add_(self, dim, index, src):
        assert dim == 0
        np.add.at(self.a, index.a, src.a)
        return self

    def __getitem__(self, idx):
        conv = tuple(i.a if isinstance(i, _T) else i for i in (idx if isinstance(idx, tuple) else (idx,)))
        return _T(self.a[conv if len(conv) > 1 else conv[0]], self.dtype)

    def _op(f):
        return lambda self, o: _T(f(self.a, o.a if isinstance(o, _T) else o))

    __add__ = _op(np.add)
    __radd__ = _op(lambda a, b: b + a)
    __sub__ = _op(np.subtract)
    __rsub__ = _op(lambda a, b: b - a)
    __mul__ = _op(np.multiply)
    __rmul__ = _op(np.multiply)
    __truediv__ = _op(np.divide)
    __matmul__ = _op(np.matmul)
    __lt__ = _op(np.less)
    __gt__ = _op(np.greater)
    __ge__ = _op(np.greater_equal)
    __eq__ = _op(np.equal)
    __ne__ = _op(np.not_equal)
    __and__ = _op(np.logical_and)
    __invert__ = lambda self: _T(~self.a)  # noqa: E731


class _FakeTorch:
    """The torch functions the reference variants call."""

    float32 = "float"

    class nn:
        class functional:
            silu = staticmethod(lambda x: _T(x.a / (1.0 + np.exp(-x.a)), x.dtype))

    @staticmethod
    def arange(n, device=None):
        return _T(np.arange(n))

    @staticmethod
    def matmul(a, b):
        return _T(np.matmul(a.a, b.a), a.dtype)

    @staticmethod
    def where(c, a, b):
        return _T(np.where(c.a, a.a, b.a), a.dtype)

    zeros_like = staticmethod(lambda t: _T(np.zeros_like(t.a), t.dtype))
    ones_like = staticmethod(lambda t: _T(np.ones_like(t.a), t.dtype))
    isfinite = staticmethod(lambda t: _T(np.isfinite(t.a)))
    exp = staticmethod(lambda t: _T(np.exp(t.a), t.dtype))

    @staticmethod
    def log(t):
        with np.errstate(divide="ignore"):
            return _T(np.log(t.a), t.dtype)

    @staticmethod
    def zeros(*shape, dtype=None, device=None):
        return _T(np.zeros(shape), "float")

    @staticmethod
    def unique(t):
        return _T(np.unique(t.a))

    @staticmethod
    def nonzero(t, as_tuple=True):
        return tuple(_T(i) for i in np.nonzero(t.a))


def _load(path):
    with safe_open(path, "np") as f:
        t = {k[3:]: f.get_tensor(k) for k in f.keys() if k.startswith("in.")}
        exp = {k[4:]: f.get_tensor(k).astype(np.float64) for k in f.keys() if k.startswith("out.")}
    return {k: _T(v.astype(np.float64) if v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16 else v)
            for k, v in t.items()}, exp


def _load_v2(path):
    """Inputs and outputs of a golden-v2 file (FP8 codes included), as _load."""
    _, arrays = peer.read_file(path)
    t = {k[3:]: _T(v.astype(np.float64) if v.dtype.kind in "fV" or v.dtype == ml_dtypes.bfloat16 else v)
         for k, v in arrays.items() if k.startswith("in.")}
    exp = {k[4:]: v.astype(np.float64) for k, v in arrays.items() if k.startswith("out.")}
    return t, exp


class ReferenceFunctionsOnTheGoldens(unittest.TestCase):
    """mla_decode_bmm and moe_experts_loop, run through the numpy stand-in above, match
    every golden case in f64 within the F32 tolerance: their gathers, masks (NaN-filled
    unused cache slots included), layouts and skipped slots are right."""

    def check(self, op, outputs):
        cases = [c for c in torch_peer.golden_cases([GOLDEN]) if c["op"] == op]
        self.assertGreater(len(cases), 0)
        for c in cases:
            with self.subTest(case=os.path.relpath(c["path"], GOLDEN)):
                t, exp = _load(c["path"])
                got = torch_peer.run_case(_FakeTorch, variants_ref[op], op, c["params"], t)
                for name, g in zip(outputs, got):
                    np.testing.assert_allclose(g.a, exp[name], rtol=1e-4, atol=1e-4, err_msg=name)

    def test_mla_decode_bmm(self):
        self.check("mla_decode", ["o", "lse"])

    def test_moe_experts_loop(self):
        self.check("moe_experts", ["y"])

    def test_fp8_experts_loop_dequantizes_per_expert(self):
        # FP8 w8a16 (partial blocks, the SwiGLU clamp) in f64: the dequantization's block
        # indexing and the clamp are right; torch's rounding is checked where it runs.
        cases = [c for c in torch_peer.golden_cases([GOLDEN_V2])
                 if c["op"] == "moe_experts" and "fp8" in os.path.basename(c["path"])]
        self.assertGreaterEqual(len(cases), 3)
        for c in cases:
            with self.subTest(case=os.path.relpath(c["path"], GOLDEN_V2)):
                t, exp = _load_v2(c["path"])
                (got,) = torch_peer.run_case(_FakeTorch, "loop", "moe_experts", c["params"], t)
                tol = torch_peer.TOL[c["dtype"]]
                np.testing.assert_allclose(got.a, exp["y"], rtol=tol, atol=tol)


variants_ref = {"mla_decode": "bmm", "moe_experts": "loop"}


if __name__ == "__main__":
    unittest.main()
