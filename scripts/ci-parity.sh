#!/usr/bin/env bash
# A nightly parity job's cycle, end to end, on cpu + PoCL (OpenCL on the CPU), checking
# that every report agrees with the exit code:
#
#   1. full run, cpu and opencl required                          -> exit 0
#   2. the same cases in two shards, merged                       -> the full run's cells
#   3. full run against the shards' reports as baseline           -> exit 0, no regression
#   4. against a baseline whose worst ratios were 10x smaller     -> exit 6, ratio growth
#   5. a numeric mismatch (a golden with wrong expected weights)   -> exit 1, <failure>
#   6. a required backend that cannot open (a missing plugin)      -> exit 3, failing cell
#   7. a malformed golden file                                    -> exit 4, <error>
#   8. an unknown backend name                                    -> exit 2, no report
#   9. a report that cannot be written                            -> exit 5
#  10. the default `--backend all`: every backend of the build has a suite
#
# Every JUnit file is validated against Jenkins' xUnit junit-10.xsd
# (conformance/schema/junit-10.xsd, with the Python package xmlschema) and read back with
# junitparser; its counts must match the JSON report's, and both must match the exit code.
#
# Usage:
#   bash scripts/ci-parity.sh [OUT_DIR]              # the cycle (default target/ci-parity)
#   bash scripts/ci-parity.sh validate FILE.xml...   # only validate JUnit files
# Needs: python3 with xmlschema and junitparser (.ci/requirements-reports.txt), PoCL.
# $MOEMLA: the moemla binary (default target/release/moemla, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
XSD=conformance/schema/junit-10.xsd

# check_junit XML [JSON RC]: validates XML; with JSON and RC, checks that the JUnit counts,
# the JSON report and the exit code agree.
check_junit() {
    python3 - "$XSD" "$@" <<'PY'
import json, sys
import junitparser, xmlschema

xsd, xml = sys.argv[1], sys.argv[2]
xmlschema.XMLSchema(xsd).validate(xml)
suites = junitparser.JUnitXml.fromfile(xml)
n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
names = []
for suite in suites:
    names.append(suite.name)
    for case in suite:
        n["tests"] += 1
        kinds = {type(r).__name__ for r in case.result}
        n["failures"] += "Failure" in kinds
        n["errors"] += "Error" in kinds
        n["skipped"] += "Skipped" in kinds
if len(sys.argv) == 3:
    print(f"{xml}: valid (junit-10.xsd), {n}")
    sys.exit(0)
report, rc = sys.argv[3], int(sys.argv[4])
doc = json.load(open(report))
s = doc["summary"]
problems = []
if doc["exit_code"] != rc:
    problems.append(f"JSON exit_code {doc['exit_code']} but the process exited {rc}")
if n["tests"] != len(doc["results"]):
    problems.append(f"JUnit has {n['tests']} testcases, JSON {len(doc['results'])} results")
for key, junit_key in (("failed", "failures"), ("errors", "errors")):
    if s[key] != n[junit_key]:
        problems.append(f"JSON {key} {s[key]} but JUnit {junit_key} {n[junit_key]}")
if s["skipped"] + s["mistrusted"] != n["skipped"]:
    problems.append(f"JSON skipped+mistrusted {s['skipped'] + s['mistrusted']}, JUnit {n['skipped']}")
if [b["name"] for b in doc["backends"]] != names:
    problems.append(f"JUnit suites {names}, JSON backends {[b['name'] for b in doc['backends']]}")
want = {0: "pass", 1: "mismatch", 3: "required_backend", 4: "goldens", 6: "regression"}
if doc["outcome"] != want.get(rc, doc["outcome"]):
    problems.append(f"outcome {doc['outcome']} for exit {rc}")
if rc == 0 and (n["failures"] or n["errors"]):
    problems.append("exit 0 with failures or errors in JUnit")
if rc in (1, 3) and not n["failures"]:
    problems.append(f"exit {rc} without a failing testcase")
if rc == 4 and not n["errors"] and n["tests"]:
    problems.append("exit 4 without an <error> testcase")
for key in ("timestamp", "hostname"):
    if not doc["run"][key]:
        problems.append(f"no run {key}")
if problems:
    sys.exit(f"{xml} / {report} (exit {rc}):\n  " + "\n  ".join(problems))
print(f"{report}: exit {rc} ({doc['outcome']}), JUnit valid and in agreement: {n}")
PY
}

if [[ ${1:-} == validate ]]; then
    shift
    for f in "$@"; do check_junit "$f"; done
    exit 0
fi

OUT=${1:-target/ci-parity}
M=${MOEMLA:-target/release/moemla}
[[ -x $M ]] || cargo build --release -p moemla-cli
rm -rf "$OUT"
mkdir -p "$OUT"

# run NAME ARGS...: moemla conformance with JSON and JUnit reports $OUT/NAME.{json,xml}
# and its log in $OUT/NAME.log; sets RC. The CI job's own requirements do not apply here.
run() {
    local name=$1
    shift
    RC=0
    env -u MOEMLA_REQUIRE -u MOEMLA_ALLOW_UNSUPPORTED -u MOEMLA_GOLDEN "$M" "$@" \
        --json "$OUT/$name.json" --junit "$OUT/$name.xml" >"$OUT/$name.log" 2>&1 || RC=$?
}

# expect CODE NAME ARGS...: run, then require exit CODE and reports that agree with it.
expect() {
    local want=$1 name=$2
    shift 2
    run "$name" "$@"
    if ((RC != want)); then
        tail -n 30 "$OUT/$name.log"
        echo "ci-parity: $name exited $RC, expected $want" >&2
        exit 1
    fi
    check_junit "$OUT/$name.xml" "$OUT/$name.json" "$RC"
}

# shellcheck disable=SC2054 # the commas are moemla's list syntax, not array separators
PARITY=(conformance --backend cpu,opencl --require cpu,opencl)

echo "== 1. full run"
expect 0 full "${PARITY[@]}"

echo "== 2. two shards, merged"
expect 0 shard1 "${PARITY[@]}" --shard 1/2
expect 0 shard2 "${PARITY[@]}" --shard 2/2
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
cells = lambda doc: {(r["case"], r["backend"]): (r["status"], r.get("worst_ratio")) for r in doc["results"]}
full = cells(json.load(open(f"{out}/full.json")))
merged, seen = {}, 0
for i in (1, 2):
    part = cells(json.load(open(f"{out}/shard{i}.json")))
    seen += len(part)
    merged.update(part)
assert seen == len(merged), "a cell ran in both shards"
assert merged.keys() == full.keys(), "the shards do not cover the full run"
# Statuses agree; ratios agree up to run-to-run rounding of parallel sums.
for key, (status, ratio) in full.items():
    assert merged[key][0] == status, (key, merged[key], status)
print(f"shards: {seen} cells, the full run's, each once")
PY

echo "== 3. baseline: the shards' reports"
expect 0 baseline-same "${PARITY[@]}" --baseline "$OUT/shard1.json" --baseline "$OUT/shard2.json"
python3 - "$OUT/baseline-same.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["baseline"]
assert b["regressions"] == [] and b["not_in_baseline"] == 0 and b["compared"] > 0, b
print(f"baseline: {b['compared']} cells compared, no regression")
PY

echo "== 4. baseline with 10x smaller worst ratios"
python3 - "$OUT/full.json" "$OUT/tight-baseline.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["results"]:
    if r.get("worst_ratio"):
        r["worst_ratio"] /= 10
json.dump(doc, open(sys.argv[2], "w"))
PY
expect 6 baseline-tight "${PARITY[@]}" --baseline "$OUT/tight-baseline.json"
grep -q "ratio growth" "$OUT/baseline-tight.log"

echo "== 5. numeric mismatch"
mkdir -p "$OUT/wrong/moe_route/f32"
python3 - conformance/golden/moe_route/f32/v2_t1.safetensors "$OUT/wrong/moe_route/f32/v2_t1.safetensors" <<'PY'
import json, struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", data[:8])[0]
begin, end = json.loads(data[8:8 + n])["out.topk_weights"]["data_offsets"]
data[8 + n + begin:8 + n + end] = struct.pack("<f", 10.0) * ((end - begin) // 4)
open(sys.argv[2], "wb").write(data)
PY
expect 1 mismatch "${PARITY[@]}" --golden "$OUT/wrong"

echo "== 6. required backend that cannot open"
expect 3 required --plugin "$OUT/libghost.so" "${PARITY[@]}" --require cpu,opencl,ghost \
    --filter moe_route

echo "== 7. malformed golden"
mkdir -p "$OUT/bad/moe_route"
printf 'not a case' >"$OUT/bad/moe_route/broken.safetensors"
expect 4 malformed "${PARITY[@]}" --golden conformance/golden/moe_route --golden "$OUT/bad"

echo "== 8. unknown backend name"
run usage conformance --backend cpu,nosuch
[[ $RC == 2 && ! -e $OUT/usage.json && ! -e $OUT/usage.xml ]] ||
    { echo "ci-parity: --backend nosuch exited $RC (reports: $(ls "$OUT"/usage.* 2>/dev/null))" >&2; exit 1; }

echo "== 9. unwritable report"
RC=0
"$M" conformance --backend cpu --filter moe_route --json "$OUT/no/such/dir/r.json" \
    >"$OUT/unwritable.log" 2>&1 || RC=$?
[[ $RC == 5 ]] || { echo "ci-parity: unwritable report exited $RC, expected 5" >&2; exit 1; }

echo "== 10. default --backend all: every backend has a suite"
expect 0 all conformance --filter moe_route/f32/v2_t1.safetensors
python3 - "$OUT/all.json" <<'PY'
import json, subprocess, sys, os
doc = json.load(open(sys.argv[1]))
built = [d["name"] for d in json.loads(subprocess.check_output([os.environ.get("MOEMLA", "target/release/moemla"), "devices", "--json"]))]
assert [b["name"] for b in doc["backends"]] == built, (doc["backends"], built)
for b in doc["backends"]:
    if not b["available"]:
        assert all(r["status"] == "unavailable" and r["message"] for r in doc["results"] if r["backend"] == b["name"]), b
print(f"all: suites for {built}")
PY

echo "ci-parity: every step agreed with its exit code ($OUT)"
