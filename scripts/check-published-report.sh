#!/usr/bin/env bash
# Checks a published conformance report as its reader would: `moemla conformance --verify`
# passes on it; a tampered copy of the report and a tampered copy of its golden set each
# fail with exit code 7, naming what differs; the HTML page renders in headless Chromium
# (the DOM after its script ran, and a screenshot) and its matrix matches the JSON
# (scripts/check-html-report.py).
#
# Usage: scripts/check-published-report.sh REPORT.json REPORT.html WORKDIR GOLDEN_DIR
#   GOLDEN_DIR: the golden root the report was run on (one root). The moemla binary is
#   $MOEMLA_BIN, else target/release/moemla. Chromium is $CHROMIUM, else `chromium`.
set -euo pipefail
[ $# -eq 4 ] || { sed -n '2,12p' "$0"; exit 2; }
json=$1 html=$2 work=$3 golden=$4
moemla=${MOEMLA_BIN:-target/release/moemla}
chromium=${CHROMIUM:-chromium}
rm -rf "$work" && mkdir -p "$work"

# Runs a command that must exit with code $1 and print $2.
expect() {
    local want=$1 needle=$2 code=0
    shift 2
    "$@" >"$work/out.txt" 2>&1 || code=$?
    cat "$work/out.txt"
    if [ "$code" != "$want" ] || ! grep -qF -- "$needle" "$work/out.txt"; then
        echo "expected exit code $want and \`$needle\` from: $*, got $code" >&2
        exit 1
    fi
}

echo "-- the report verifies against $golden"
expect 0 "verified " "$moemla" conformance --verify "$json" --golden "$golden"

echo "-- a tampered report fails: one passing cell's status edited"
python3 - "$json" "$work/tampered.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
i = next(i for i, r in enumerate(doc["results"]) if r["status"] == "pass")
doc["results"][i]["status"] = "fail"
json.dump(doc, open(sys.argv[2], "w", encoding="utf-8"))
print(f"results[{i}].status: pass -> fail")
PY
expect 7 "NOT VERIFIED" "$moemla" conformance --verify "$work/tampered.json" --golden "$golden"
# The edited cell itself, or (had it carried a message) the counts it no longer matches.
grep -qE 'results\[[0-9]+\]\.status|summary\.passed' "$work/out.txt"

echo "-- a tampered golden set fails, naming the case: one byte of one file flipped"
cp -r "$golden" "$work/golden"
case=$(python3 - "$json" "$work/golden" <<'PY'
import json, os, sys
files = json.load(open(sys.argv[1], encoding="utf-8"))["run"]["golden"]["files"]
case = files[len(files) // 2]["case"]
path = os.path.join(sys.argv[2], case)
data = bytearray(open(path, "rb").read())
data[len(data) // 2] ^= 0x01
open(path, "wb").write(data)
print(case)
PY
)
expect 7 "$case" "$moemla" conformance --verify "$json" --golden "$work/golden"

echo "-- the HTML page in headless Chromium: DOM after its script ran, and a screenshot"
url="file://$(realpath "$html")"
flags=(--headless --no-sandbox --disable-gpu --disable-extensions --no-first-run
       --disable-background-networking --user-data-dir="$work/chromium-profile")
timeout 120 "$chromium" "${flags[@]}" --dump-dom "$url" >"$work/dom.html" 2>"$work/chromium.log"
timeout 120 "$chromium" "${flags[@]}" --window-size=1400,1000 \
    --screenshot="$work/report.png" "$url" >>"$work/chromium.log" 2>&1
python3 - "$work/report.png" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, "no screenshot"
print(f"screenshot {sys.argv[1]}: {len(data)} bytes")
PY
python3 scripts/check-html-report.py "$work/dom.html" --rendered --json "$json"
