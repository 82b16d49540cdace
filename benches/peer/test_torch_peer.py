"""The torch peer's parts that need no torch: its safetensors header reader, the golden cases
it checks itself on, tolerances, the bench case names it shares with `moemla bench`, the
ours-vs-torch table, and its exit status where torch cannot be imported (the GPU check reads
that status). Its torch functions are checked against the goldens by the peer itself, on the
GPU machine, before anything is timed."""
import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

from safetensors import safe_open

import torch_peer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "conformance", "golden")
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

    def test_exit_2_on_a_missing_golden_dir_before_torch_is_imported(self):
        r = self.run_peer("--golden", os.path.join(GOLDEN, "no-such-dir"))
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("does not exist", r.stderr)


if __name__ == "__main__":
    unittest.main()
