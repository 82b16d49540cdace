#!/usr/bin/env python3
"""Generate the moemla golden cases from an independent float64 numpy reference.

    python3 conformance/gen/generate.py --out conformance/golden     # (re)write the set
    python3 conformance/gen/generate.py --check conformance/golden   # verify it byte for byte
    python3 conformance/gen/generate.py --set v2 --out DIR           # contract v2 cases only

Every case is checked before it is written (no routing near-ties, no degenerate outputs, a
low-precision kernel model within the contract's tolerance); a failing case aborts the run.
"""

import argparse
import fnmatch
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import SETS, all_cases  # noqa: E402
from checks import CaseError  # noqa: E402
from writer import case_bytes  # noqa: E402


def write_all(out_dir, pattern, verbose, case_set="v1"):
    """Build, check and write every case of `case_set` whose op/dtype/name matches `pattern`."""
    count = 0
    for op, dtype, name, builder in all_cases(case_set):
        if not fnmatch.fnmatch(f"{op}/{dtype}/{name}", pattern):
            continue
        try:
            case = builder()
        except CaseError as err:
            sys.exit(f"error: refusing to write {op}/{dtype}/{name}: {err}")
        if case.check_ratio is None:
            sys.exit(f"error: refusing to write {op}/{dtype}/{name}: its fairness self-check did not run")
        path = os.path.join(out_dir, case.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(case_bytes(case.tensors, case.op, case.params, case.description, case.tolerance))
        count += 1
        if verbose:
            extra = "" if case.discrimination is None else f", feature ignored: {case.discrimination:.2f}x tolerance"
            print(f"{case.path}: {os.path.getsize(path)} bytes, kernel-model error {case.check_ratio:.3f} of tolerance{extra}")
    return count


def list_files(root):
    """Relative paths of all files under root."""
    found = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            found.add(os.path.relpath(os.path.join(dirpath, f), root))
    return found


def check(golden_dir, verbose, case_set="v1"):
    """Regenerate `case_set` into a temporary directory and compare with golden_dir byte for byte."""
    with tempfile.TemporaryDirectory() as tmp:
        write_all(tmp, "*", verbose, case_set)
        fresh, committed = list_files(tmp), list_files(golden_dir)
        problems = [f"missing: {p}" for p in sorted(fresh - committed)]
        problems += [f"extra: {p}" for p in sorted(committed - fresh)]
        for p in sorted(fresh & committed):
            with open(os.path.join(tmp, p), "rb") as a, open(os.path.join(golden_dir, p), "rb") as b:
                if a.read() != b.read():
                    problems.append(f"differs: {p}")
    for line in problems:
        print(line)
    print(f"{len(fresh)} cases regenerated, {len(problems)} problem(s) in {golden_dir}")
    return not problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR", help="write the cases under DIR/<op>/<dtype>/")
    mode.add_argument("--check", metavar="DIR", help="regenerate and compare with DIR; non-zero exit on any difference")
    parser.add_argument("--set", dest="case_set", choices=SETS, default="v1", help="v1: the committed set (default); v2: contract v2 cases only; all: both")
    parser.add_argument("--only", metavar="GLOB", default="*", help="with --out: only cases matching op/dtype/name")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case with its size and check margin")
    args = parser.parse_args()
    start = time.monotonic()
    if args.check:
        ok = check(args.check, args.verbose, args.case_set)
        print(f"check took {time.monotonic() - start:.1f}s")
        sys.exit(0 if ok else 1)
    n = write_all(args.out, args.only, args.verbose, args.case_set)
    print(f"wrote {n} cases to {args.out} in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
