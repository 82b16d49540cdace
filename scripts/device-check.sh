#!/usr/bin/env bash
# device-check.sh — proves the CUDA backend (and OpenCL on NVIDIA's driver) on a lent GPU
# machine, from binaries built here: that machine has no Rust toolchain and no network.
#
#   bash scripts/device-check.sh pack                    # here: build, strip, pack .device-pack/
#   bash scripts/device-check.sh run OUT_DIR             # on the GPU machine: run the checks
#   bash scripts/device-check.sh run --dry-run OUT_DIR   # here and in CI: the same run half
#   bash scripts/device-check.sh run --only conformance,memcheck OUT_DIR   # a rerun of a few steps
#
# THE INVOCATION ON THE GPU MACHINE (the device tool's `run`, one call, after `pack` here):
#   command:   bash scripts/device-check.sh run $OUT
#   carry:     [".device-pack"]
#   timeout_s: 560
# The working tree travels with it (the committed goldens included: they are not packed
# again); `pack` prints the total and fails above the tool's 64 MiB. The run ends within 8
# minutes: each step has its own limit (they sum to more) and a 470 s deadline clips them;
# the first run on an H200 (2026-12-04) took 184 s, so a lease of 15 minutes leaves room for
# fixes and reruns. At most 8 files come back from $OUT:
# summary.txt, logs.tar.gz (every step's log and report) and the main reports.
#
# `pack` (needs cargo, strip, objdump, apt-get, python3):
#   cargo build --release -p moemla-cli, cargo test --release --no-run -p moemla-cuda (the
#   shared op suite for cuda, the NVRTC compile test, the availability test, the crate's unit
#   tests), executables located from cargo's JSON messages, stripped, copied into
#   .device-pack/ with a MANIFEST (sha256 of each); every binary must need glibc <= 2.34
#   (objdump -T). Debian's OpenCL ICD loader (ocl-icd-libopencl1) is downloaded into the
#   pack: the GPU machine may have no libOpenCL.so.1.
#
# `run OUT_DIR` (no cargo, only the pack and the tree), each step with its own time limit and
# its log in OUT_DIR/logs/, a table (step, result, seconds) last:
#   locate       libcuda; NVRTC (MOEMLA_NVRTC_LIB, the CUDA toolkit's lib64, the python
#                nvidia wheels); cuBLAS for the bench ceilings (MOEMLA_CUBLAS_LIB); tools
#   nvidia-smi   the device, its driver, clocks and memory
#   cuda-tests   the cuda crate's unit, availability and NVRTC compile tests (sm_80/sm_90;
#                NVRTC takes about a minute for the two there)
#   suite        the shared op suite with MOEMLA_REQUIRE=cuda (a missing device fails)
#   conformance  moemla conformance --require cuda --backend cuda (JSON + JUnit)
#   conformance-v2  the same on conformance/golden-v2 (V4 routing, FP8 experts and cache,
#                sparse attention, the indexer, cache writes) with --allow-unsupported cuda:
#                an op or format CUDA does not list is reported skipped with its reason,
#                everything it runs must pass
#   memcheck     compute-sanitizer memcheck over MEMCHECK_CASES (every op, every dtype)
#   racecheck    compute-sanitizer racecheck over SMALL_CASES (one case per op)
#   initcheck    compute-sanitizer initcheck over SMALL_CASES
#   memcheck-v2  memcheck over MEMCHECK_V2_CASES (golden-v2: every v2 kernel and format)
#   racecheck-v2 racecheck over SMALL_V2_CASES (w8a8 experts, FP8 sparse decode, indexer)
#   ncu          Nsight Compute (--clock-control none) launch stats and occupancy, SMALL_CASES
#   opencl       conformance --backend opencl --require opencl on NVIDIA's OpenCL, through
#                the packed ICD loader (an ICD file for libnvidia-opencl.so.1 is written when
#                /etc/OpenCL/vendors has none)
#   opencl-v2    the same on conformance/golden-v2
#   bench-mla    moemla bench --backend cuda --device-shapes, mla_decode bf16 (FlashMLA's shapes)
#   bench-experts  the same for moe_experts bf16 (DeepSeek-V3 experts, T 16 and 4096)
#   bench-v2     the same for mla_sparse_decode and dsa_indexer_topk (V3.2's shapes;
#                bench-mla also times the FP8-cache decode at FlashMLA's shapes)
#   torch-peer   benches/peer/torch_peer.py: checks itself on the goldens, measures the
#                ceilings (event-timed copy, cuBLAS bf16 GEMM) and times torch at the bench
#                shapes, then prints our time / torch's per shape (skipped if no torch)
#   profile-mla  ncu --set full on one launch of the bf16 decode kernel at FlashMLA's
#                memory-bound shape (b 128, h_q 16, seqlen 4096), CSV in the logs
#   profile-experts  the same on the gate/up and down GEMMs of the V3 experts at T 4096
#   Case subsets: `--golden FILE` lists (repeatable) rather than one `--filter` glob, so one
#   sanitizer run covers every op and dtype with a few small cases.
#
# `run --dry-run OUT_DIR` runs the same half against the pack here: no libcuda, so every step
# that needs the GPU must fail with the backend's own "backend `cuda` is unavailable" reason,
# and is then reported "skipped (dry run: no GPU)" (any other failure fails); tools that are
# absent here (nvidia-smi, compute-sanitizer, ncu) are skipped, where a real run fails
# without them (a missing torch is a skip in both); cuda-tests (NVRTC compile included, when NVRTC is found) and the OpenCL step
# run for real, the latter on PoCL through the packed loader and an ICD file written by the
# script. Step limits are doubled in a dry run (CI has 2 cores), the deadline is not.
#
# Exit status: 0 when no step failed, 1 otherwise, 2 on a usage error or a broken pack.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PACK=.device-pack
# The newest glibc symbol version our binaries may need (the GPU machine's glibc is newer;
# keep ours building against old enough symbols).
GLIBC_MAX=2.34
# The device tool's limit on what travels (tracked + untracked-not-ignored files + carry).
TRAVEL_LIMIT=$((64 * 1024 * 1024))

# Small golden subsets for the sanitizers (relative to conformance/golden).
MEMCHECK_CASES=(
    moe_route/f32/v3_t33
    moe_route/bf16/e48_softmax_bias_top2sum_t5
    moe_route/f16/v2lite_t33
    moe_experts/bf16/t33_h96_i48_e8_k3_edges
    moe_experts/f32/t9_h32_i16_e64_k6
    moe_experts/f16/t3_h32_i1408_e2_k2
    mla_decode/bf16/v3_b4_sq2_h16_causal_blk64
    mla_decode/f32/d64_v48_b2_sq2_h4_hkv2_causal_blk16
    mla_decode/f16/v3_b2_sq1_h128_blk64
)
SMALL_CASES=(
    moe_route/bf16/v3_t33
    moe_experts/bf16/t33_h96_i48_e8_k3_edges
    mla_decode/bf16/v3_b4_sq2_h16_causal_blk64
)
# Contract v2 subsets (relative to conformance/golden-v2): every v2 kernel and format under
# memcheck, the ones with new shared-memory phases under racecheck.
MEMCHECK_V2_CASES=(
    moe_route/bf16/v4_sqrtsoftplus_t33
    moe_route/bf16/v4_hash_t17_vocab40
    moe_experts/bf16/fp8_w8a16_t7_h200_i96_e3_k2_partial
    moe_experts/bf16/fp8_w8a8_ue8m0_t9_h200_i160_e4_k3
    moe_experts/bf16/shared2_t7_h64_i24_e5_k3_is40_empty
    moe_experts/bf16/dense_swiglu7_t5_h64_i32_e4_k2
    mla_kv_quantize/bf16/n40_corners
    mla_cache_write/bf16/fp8_nb2_bs16_n12
    mla_cache_write/bf16/dense_d72_nb5_bs16_n24
    mla_decode/bf16/fp8_b2_sq2_h32_causal_blk64
    mla_sparse_decode/bf16/v32_fp8_b3_sq2_h16_topk64_edges
    mla_sparse_decode/bf16/d64_v48_b3_sq2_h8_topk32_edges
    dsa_indexer_topk/bf16/hi4_di32_b3_sq3_causal_k16
)
SMALL_V2_CASES=(
    moe_experts/bf16/fp8_w8a8_ue8m0_t9_h200_i160_e4_k3
    mla_sparse_decode/bf16/v32_fp8_b3_sq2_h16_topk64_edges
    dsa_indexer_topk/bf16/hi4_di32_b3_sq3_causal_k16
)

die() {
    echo "device-check: $*" >&2
    exit 2
}

# `--golden FILE` arguments for the named cases of the golden set in directory SET
# (conformance/golden, conformance/golden-v2); fails when one is missing.
golden_args() {
    local set=$1 c f
    shift
    for c in "$@"; do
        f="$set/$c.safetensors"
        [[ -f $f ]] || {
            echo "device-check: golden case $f is missing (update the subsets in $0)" >&2
            return 1
        }
        printf -- '--golden\n%s\n' "$f"
    done
}

# Largest GLIBC_x.y symbol version a binary needs ("none" if it needs none).
glibc_needed() {
    objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1 |
        grep . || echo none
}

# Bytes of the given files (NUL-separated on stdin); missing files count 0.
sum_bytes() {
    xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

# ---------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------
cmd_pack() {
    local t0=$SECONDS tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    git check-ignore -q "$PACK/" || die "$PACK/ is not git-ignored: add it to .gitignore"
    golden_args conformance/golden "${MEMCHECK_CASES[@]}" "${SMALL_CASES[@]}" >/dev/null || exit 2
    golden_args conformance/golden-v2 "${MEMCHECK_V2_CASES[@]}" "${SMALL_V2_CASES[@]}" >/dev/null || exit 2

    echo "== cargo build --release -p moemla-cli"
    cargo build --release -p moemla-cli --message-format=json-render-diagnostics \
        >"$tmp/build.json" || die "cargo build failed"
    echo "== cargo test --release --no-run -p moemla-cuda"
    cargo test --release --no-run -p moemla-cuda --message-format=json-render-diagnostics \
        >"$tmp/test.json" || die "cargo test --no-run failed"

    # "<pack path> <source>" per executable, from cargo's compiler-artifact messages.
    python3 - "$tmp/build.json" "$tmp/test.json" >"$tmp/list" <<'EOF' || die "no executables in cargo's output"
import json, sys
rows = []
for path in sys.argv[1:]:
    for line in open(path):
        m = json.loads(line)
        exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
        if not exe:
            continue
        t, pkg = m["target"], m["package_id"]
        if "bin" in t["kind"] and t["name"] == "moemla" and not m["profile"]["test"]:
            rows.append(("bin/moemla", exe))
        elif m["profile"]["test"] and "moemla-cuda" in pkg:
            name = "unit" if "lib" in t["kind"] else t["name"]
            rows.append((f"tests/cuda-{name}", exe))
names = [r[0] for r in rows]
need = ["bin/moemla", "tests/cuda-suite", "tests/cuda-nvrtc_compile", "tests/cuda-availability"]
missing = [n for n in need if n not in names]
if missing or len(set(names)) != len(names):
    sys.exit(f"cargo's JSON: missing {missing} or duplicates in {names}")
for name, exe in rows:
    print(name, exe)
EOF

    rm -rf "$PACK"
    mkdir -p "$PACK/bin" "$PACK/tests" "$PACK/deb"
    local name src need worst=none
    while read -r name src; do
        strip --strip-all -o "$PACK/$name" "$src" || die "strip $src failed"
        need=$(glibc_needed "$PACK/$name")
        printf '   %-28s %9s  needs glibc %s\n' "$name" "$(stat -c %s "$PACK/$name")" "$need"
        if [[ $need != none ]] && [[ $(printf '%s\n%s\n' "$need" "$GLIBC_MAX" | sort -V | tail -n1) != "$GLIBC_MAX" ]]; then
            die "$name needs GLIBC_$need, newer than $GLIBC_MAX (the GPU machine's floor we keep)"
        fi
        if [[ $worst == none ]] || [[ $need != none && $(printf '%s\n%s\n' "$need" "$worst" | sort -V | tail -n1) == "$need" ]]; then
            worst=$need
        fi
    done <"$tmp/list"

    echo "== apt-get download ocl-icd-libopencl1 (Debian's OpenCL ICD loader)"
    (cd "$PACK/deb" && apt-get download -q -o APT::Sandbox::User=root ocl-icd-libopencl1:amd64 >/dev/null) ||
        die "apt-get download ocl-icd-libopencl1 failed (run apt-get update first)"

    {
        echo "# device-check pack: bash scripts/device-check.sh run OUT_DIR reads this"
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "dirty $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
        echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
        echo "rustc $(rustc --version 2>/dev/null | cut -d' ' -f2)"
        echo "glibc-needed $worst"
        (cd "$PACK" && find bin tests deb -type f | sort | while read -r f; do
            echo "file $(sha256sum "$f" | cut -d' ' -f1) $f"
        done)
    } >"$PACK/MANIFEST"

    # What travels: tracked files, untracked files git does not ignore, shared/ and the pack.
    local tracked untracked shared=0 pack total
    tracked=$(git ls-files -z | sum_bytes)
    untracked=$(git ls-files -z --others --exclude-standard | sum_bytes)
    [[ -d shared ]] && shared=$(find shared -type f -print0 | sum_bytes)
    pack=$(find "$PACK" -type f -print0 | sum_bytes)
    total=$((tracked + untracked + shared + pack))
    echo "== what travels to the GPU machine"
    printf '   tracked files              %s\n' "$(mib "$tracked")"
    printf '   untracked, not ignored     %s\n' "$(mib "$untracked")"
    ((shared > 0)) && printf '   shared/                    %s\n' "$(mib "$shared")"
    printf '   %-26s %s (%s files)\n' "$PACK/" "$(mib "$pack")" "$(find "$PACK" -type f | wc -l)"
    printf '   total                      %s of %s\n' "$(mib "$total")" "$(mib "$TRAVEL_LIMIT")"
    ((total <= TRAVEL_LIMIT)) || die "what travels ($(mib "$total")) is over the device tool's 64 MiB"
    echo "== pack ready in $((SECONDS - t0)) s: $PACK/ (glibc needed: $worst <= $GLIBC_MAX)"
}

# ---------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------
DRY=0
ONLY=""
# Every step of `run`, in order (for --only).
STEPS="nvidia-smi cuda-tests suite conformance conformance-v2 memcheck racecheck initcheck memcheck-v2 racecheck-v2 ncu opencl opencl-v2 bench-mla bench-experts bench-v2 torch-peer profile-mla profile-experts"
OUT=""
LOGS=""
WORK=""
STARTED=$SECONDS
DEADLINE=$((SECONDS + ${DEVICE_CHECK_BUDGET_S:-470}))
declare -a R_NAME=() R_RESULT=() R_SECS=()
# The signature of a CUDA backend that could not open (suite, conformance and bench alike).
# shellcheck disable=SC2016 # backquotes are literal here
UNAVAILABLE_RE='backend `cuda` is unavailable'

record() {
    R_NAME+=("$1")
    R_RESULT+=("$2")
    R_SECS+=("$3")
    printf '   -> %s: %s (%s s)\n' "$1" "$2" "$3"
}

# Whether step NAME is to run (every step unless --only names some); records it skipped
# otherwise.
selected() {
    [[ -z $ONLY || $ONLY == *",$1,"* ]] && return 0
    record "$1" "skipped (not selected)" 0
    return 1
}

# A step that cannot run because a tool is missing: skipped in a dry run, failed otherwise.
missing() {
    selected "$1" || return 0
    if ((DRY)); then record "$1" "skipped (dry run: no $2)" 0; else record "$1" "fail (no $2)" 0; fi
}

# run_step NAME LIMIT_S GPU(0/1) COMMAND... — runs COMMAND under `timeout` with its output in
# $LOGS/NAME.log and records pass/fail. GPU=1: in a dry run, a failure whose log shows the
# CUDA backend unavailable is recorded "skipped (dry run: no GPU)". A function
# classify_NAME (dashes as underscores), if defined, gets the exit status and the log and
# may print the result instead.
run_step() {
    local name=$1 limit=$2 gpu=$3 rc t0 left log="$LOGS/$1.log"
    shift 3
    selected "$name" || return 0
    ((DRY)) && limit=$((limit * 2))
    left=$((DEADLINE - SECONDS))
    if ((left < 5)); then
        record "$name" "fail (not run: the 8-minute budget is spent)" 0
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s)"
    printf '$ %s\n' "$*" >"$log"
    t0=$SECONDS
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "exit status $rc" >>"$log"
    local secs=$((SECONDS - t0)) own="" hook="classify_${name//-/_}"
    declare -F "$hook" >/dev/null && own=$("$hook" "$rc" "$log")
    if [[ -n $own ]]; then
        [[ $own == fail* ]] && tail -n 25 "$log" | sed 's/^/   | /'
        record "$name" "$own" "$secs"
    elif ((rc == 0)); then
        record "$name" pass "$secs"
    elif ((rc == 124 || rc == 137)); then
        tail -n 15 "$log" | sed 's/^/   | /'
        record "$name" "fail (timed out after $limit s)" "$secs"
    elif ((DRY && gpu)) && grep -q "$UNAVAILABLE_RE" "$log"; then
        record "$name" "skipped (dry run: no GPU)" "$secs"
    else
        tail -n 25 "$log" | sed 's/^/   | /'
        record "$name" "fail (exit $rc)" "$secs"
    fi
}

# First file of that name in LD_LIBRARY_PATH, the dynamic loader's cache or the given
# directories.
find_lib() {
    local name=$1 d f ld
    shift
    IFS=: read -ra ld <<<"${LD_LIBRARY_PATH:-}"
    for d in "${ld[@]}"; do
        [[ -n $d && -e $d/$name ]] && { echo "$d/$name"; return 0; }
    done
    f=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')
    [[ -n $f && -e $f ]] && { echo "$f"; return 0; }
    for d in "$@"; do
        for f in "$d"/$name; do
            [[ -e $f ]] && { echo "$f"; return 0; }
        done
    done
    return 1
}

# The CUDA toolkit's library directories, newest first, then the python wheels' nvidia/ trees.
cuda_lib_dirs() {
    local r
    for r in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do
        [[ -n $r ]] || continue
        echo "$r/lib64"
        echo "$r/targets/x86_64-linux/lib"
    done
    "${PYTHON:-python3}" - 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
seen = set()
for root in roots:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True)):
        if lib not in seen and os.path.isdir(lib):
            seen.add(lib)
            print(lib)
EOF
}

# Directory of the first of `sonames` found in `dirs` (one per line on stdin).
dir_with() {
    local d s
    while read -r d; do
        for s in "$@"; do
            [[ -e $d/$s ]] && { echo "$d"; return 0; }
        done
    done
    return 1
}

# Appends a directory (or a file's directory) to LD_LIBRARY_PATH, once.
add_ld_path() {
    local d=$1
    [[ -f $d ]] && d=$(dirname "$d")
    [[ -d $d ]] || return 0
    case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) return 0 ;; esac
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
}

locate() {
    local log="$LOGS/locate.log" ok=1 dirs
    : >"$log"
    echo "== locate"
    mapfile -t dirs < <(cuda_lib_dirs)
    # libcuda: the driver's, never a toolkit's compat copy.
    LIBCUDA=$(find_lib libcuda.so.1 /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
        /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib) || LIBCUDA=""
    [[ -n $LIBCUDA ]] && add_ld_path "$(dirname "$LIBCUDA")"
    # NVRTC: MOEMLA_NVRTC_LIB as given, else the toolkit, else a wheel.
    if [[ -z ${MOEMLA_NVRTC_LIB:-} ]]; then
        MOEMLA_NVRTC_LIB=$(printf '%s\n' "${dirs[@]}" | dir_with libnvrtc.so.13 libnvrtc.so.12 libnvrtc.so) ||
            MOEMLA_NVRTC_LIB=""
    fi
    [[ -n $MOEMLA_NVRTC_LIB ]] && export MOEMLA_NVRTC_LIB
    if [[ -z ${MOEMLA_CUBLAS_LIB:-} ]]; then
        MOEMLA_CUBLAS_LIB=$(printf '%s\n' "${dirs[@]}" | dir_with libcublas.so.13 libcublas.so.12 libcublas.so) ||
            MOEMLA_CUBLAS_LIB=""
    fi
    if [[ -n $MOEMLA_CUBLAS_LIB ]]; then
        export MOEMLA_CUBLAS_LIB
        # libcublas needs libcublasLt beside it.
        add_ld_path "$MOEMLA_CUBLAS_LIB"
    fi
    # NVRTC loads its builtins library by name: its directory must be searched too.
    add_ld_path "${MOEMLA_NVRTC_LIB:-}"
    SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
        /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n1) || SANITIZER=""
    NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -rV | head -n1) || NCU=""
    SMI=$(command -v nvidia-smi || true)
    {
        echo "libcuda            ${LIBCUDA:-<not found>}"
        echo "NVRTC              ${MOEMLA_NVRTC_LIB:-<not found>}"
        echo "cuBLAS             ${MOEMLA_CUBLAS_LIB:-<not found: bench times without ceilings>}"
        echo "compute-sanitizer  ${SANITIZER:-<not found>}"
        echo "ncu                ${NCU:-<not found>}"
        echo "nvidia-smi         ${SMI:-<not found>}"
        echo "LD_LIBRARY_PATH    ${LD_LIBRARY_PATH:-}"
        echo "library dirs searched:"
        printf '  %s\n' "${dirs[@]}"
    } >>"$log"
    sed -n '1,7p' "$log" | sed 's/^/   /'
    [[ -n $MOEMLA_NVRTC_LIB ]] || ok=0
    if [[ -z $LIBCUDA ]]; then
        if ((DRY)); then record locate "skipped (dry run: no GPU)" 0; return; fi
        ok=0
    fi
    if ((ok)); then record locate pass 0; else record locate "fail (libcuda or NVRTC not found)" 0; fi
}

# Checks the pack against its manifest; prints the manifest's header.
check_pack() {
    [[ -f $PACK/MANIFEST ]] || die "no $PACK/MANIFEST: run 'bash scripts/device-check.sh pack' first (and carry $PACK)"
    local sum f n=0
    while read -r key sum f; do
        [[ $key == file ]] || continue
        n=$((n + 1))
        [[ $(sha256sum "$PACK/$f" 2>/dev/null | cut -d' ' -f1) == "$sum" ]] ||
            die "$PACK/$f is missing or differs from the MANIFEST: pack again"
    done <"$PACK/MANIFEST"
    ((n > 0)) || die "$PACK/MANIFEST lists no files"
    grep -v '^file \|^#' "$PACK/MANIFEST" | sed 's/^/   pack: /'
    local head
    head=$(git rev-parse HEAD 2>/dev/null) || head=""
    if [[ -n $head ]] && ! grep -qx "commit $head" "$PACK/MANIFEST"; then
        echo "   WARNING: the pack was built from another commit than HEAD ($head): pack again"
    fi
}

# Unpacks the packed ICD loader and points OpenCL at one driver library (NVIDIA's, or PoCL
# in a dry run): the system's ICD file if one names it, else one written here.
opencl_env() {
    local deb lib driver vendors=/etc/OpenCL/vendors icd
    deb=$(ls "$PACK"/deb/ocl-icd-libopencl1_*.deb 2>/dev/null | head -n1)
    [[ -n $deb ]] || return 1
    dpkg-deb -x "$deb" "$WORK/ocl" 2>/dev/null || dpkg -x "$deb" "$WORK/ocl" || return 1
    lib=$(ls "$WORK"/ocl/usr/lib/*/libOpenCL.so.1 2>/dev/null | head -n1)
    [[ -n $lib ]] || return 1
    if ((DRY)); then
        driver=$(find_lib libpocl.so.2 /usr/lib/x86_64-linux-gnu /usr/lib64) || return 1
        OCL_DEVICE=""
    else
        driver=$(find_lib libnvidia-opencl.so.1 "$(dirname "${LIBCUDA:-/nonexistent/x}")" \
            /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64) || return 1
        OCL_DEVICE=NVIDIA
    fi
    # A dry run always writes its own ICD file, so that this path is exercised before the GPU.
    if ((!DRY)) && grep -qls "$(basename "$driver")" "$vendors"/*.icd 2>/dev/null; then
        icd=$vendors
    else
        icd="$WORK/vendors"
        mkdir -p "$icd"
        echo "$driver" >"$icd/device-check.icd"
    fi
    OCL_ENV=(OPENCL_DYLIB_PATH="$lib" OCL_ICD_VENDORS="$icd"
        LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}")
    [[ -n $OCL_DEVICE ]] && OCL_ENV+=(MOEMLA_OPENCL_DEVICE="$OCL_DEVICE")
    echo "   OpenCL: loader $lib, ICD dir $icd -> $driver"
}

# The shared suite in a dry run: skipped only when every one of its tests failed because the
# required CUDA backend is unavailable (and none passed), never on any other failure.
classify_suite() {
    ((DRY && $1 != 0)) || return 0
    local failed unavailable
    failed=$(sed -n 's/^test result: FAILED\. [0-9]* passed; \([0-9][0-9]*\) failed.*/\1/p' "$2")
    unavailable=$(grep -c "is required by MOEMLA_REQUIRE: $UNAVAILABLE_RE" "$2")
    if [[ -n $failed && $failed == "$unavailable" ]]; then
        echo "skipped (dry run: no GPU)"
    else
        echo "fail (exit $1: ${failed:-?} failed, ${unavailable} of them for want of a GPU)"
    fi
}

# The OpenCL run must have used the intended device: NVIDIA's, or PoCL in a dry run.
classify_opencl() {
    local want=NVIDIA
    ((DRY)) && want="Portable Computing Language"
    if (($1 == 0)) && ! grep -q "opencl  available: .*$want" "$2"; then
        echo "fail (ran on another OpenCL device than $want)"
    fi
}

# torch_peer.py: exit 3 when torch cannot be imported (skipped, as the peer is optional),
# exit 4 when torch sees no CUDA device (a failure, except in a dry run).
classify_torch_peer() {
    if (($1 == 3)); then
        echo "skipped (no torch on this machine)"
    elif (($1 == 4)) && ((DRY)); then
        echo "skipped (dry run: no GPU)"
    fi
}

# Leaves at most 8 files in OUT: the summary, every log in one archive and the main reports.
bundle() {
    local keep=(conformance-cuda.json conformance-cuda.xml bench-mla.json bench-experts.json
        torch-peer.json ncu.csv)
    tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs
    local f
    for f in "${keep[@]}"; do
        [[ -f $LOGS/$f ]] && cp "$LOGS/$f" "$OUT/$f"
    done
    # Nothing travels back from a dry run: keep the logs loose there, to read.
    ((DRY)) || rm -rf "$LOGS"
}

summary() {
    local i pass=0 fail=0 skip=0
    for i in "${!R_RESULT[@]}"; do
        case ${R_RESULT[$i]} in
        pass) pass=$((pass + 1)) ;;
        skipped*) skip=$((skip + 1)) ;;
        *) fail=$((fail + 1)) ;;
        esac
    done
    {
        printf '\n%-15s %-46s %s\n' step result seconds
        for i in "${!R_NAME[@]}"; do
            printf '%-15s %-46s %s\n' "${R_NAME[$i]}" "${R_RESULT[$i]}" "${R_SECS[$i]}"
        done
        printf 'total %s s%s; logs in %s\n' "$((SECONDS - STARTED))" \
            "$( ((DRY)) && echo ' (dry run)')" "$OUT"
        printf 'device-check: %s passed, %s failed, %s skipped\n' "$pass" "$fail" "$skip"
    } | tee "$OUT/summary.txt"
    ((fail == 0))
}

cmd_run() {
    while (($#)); do
        case $1 in
        --dry-run) DRY=1 ;;
        --only)
            shift
            [[ -n ${1:-} ]] || die "--only needs a comma-separated list of steps"
            ONLY=",$1,"
            local n
            for n in ${1//,/ }; do
                [[ " $STEPS " == *" $n "* ]] || die "--only: unknown step $n (steps: $STEPS)"
            done
            ;;
        -*) die "unknown option $1 (usage: run [--dry-run] [--only STEP,...] OUT_DIR)" ;;
        *) [[ -z $OUT ]] || die "one OUT_DIR only"; OUT=$1 ;;
        esac
        shift
    done
    [[ -n $OUT ]] || die "usage: run [--dry-run] [--only STEP,...] OUT_DIR"
    mkdir -p "$OUT" || die "cannot create $OUT"
    OUT=$(cd "$OUT" && pwd)
    LOGS="$OUT/logs"
    rm -rf "$LOGS" "$OUT"/{summary.txt,logs.tar.gz,conformance-cuda.json,conformance-cuda.xml,bench-mla.json,bench-experts.json,torch-peer.json,ncu.csv}
    mkdir -p "$LOGS"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "== device-check run$( ((DRY)) && echo ' --dry-run') in $ROOT, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -m)"
    check_pack
    local M="$PACK/bin/moemla" T="$PACK/tests" sub small sub2 small2
    golden_args conformance/golden "${MEMCHECK_CASES[@]}" "${SMALL_CASES[@]}" >/dev/null || exit 2
    golden_args conformance/golden-v2 "${MEMCHECK_V2_CASES[@]}" "${SMALL_V2_CASES[@]}" >/dev/null || exit 2
    mapfile -t sub < <(golden_args conformance/golden "${MEMCHECK_CASES[@]}")
    mapfile -t small < <(golden_args conformance/golden "${SMALL_CASES[@]}")
    mapfile -t sub2 < <(golden_args conformance/golden-v2 "${MEMCHECK_V2_CASES[@]}")
    mapfile -t small2 < <(golden_args conformance/golden-v2 "${SMALL_V2_CASES[@]}")

    locate

    if [[ -n $SMI ]]; then
        run_step nvidia-smi 10 1 bash -c "'$SMI' && '$SMI' --query-gpu=name,driver_version,compute_cap,memory.total,memory.used,clocks.sm,clocks.mem,clocks.max.sm,power.limit,temperature.gpu --format=csv"
        [[ -f $LOGS/nvidia-smi.log ]] && sed -n '2,$p' "$LOGS/nvidia-smi.log" | head -n 40
    else
        missing nvidia-smi nvidia-smi
    fi

    # The cuda crate's own tests: unit, availability, NVRTC compile (required where found).
    local req_tc=""
    [[ -n ${MOEMLA_NVRTC_LIB:-} ]] && req_tc=nvrtc
    run_step cuda-tests 90 0 bash -c "set -e; for t in '$T'/cuda-unit '$T'/cuda-availability '$T'/cuda-nvrtc_compile; do [ -e \"\$t\" ] || continue; echo \"## \$t\"; MOEMLA_REQUIRE_TOOLCHAINS=$req_tc \"\$t\" --nocapture; done"

    run_step suite 40 1 env MOEMLA_REQUIRE=cuda "$T/cuda-suite"

    run_step conformance 25 1 "$M" conformance --require cuda --backend cuda \
        --json "$LOGS/conformance-cuda.json" --junit "$LOGS/conformance-cuda.xml"
    # Contract v2: ops CUDA does not list yet are skipped (named in the report), not failed.
    run_step conformance-v2 30 1 "$M" conformance --require cuda --backend cuda \
        --golden conformance/golden-v2 --allow-unsupported cuda \
        --json "$LOGS/conformance-cuda-v2.json" --junit "$LOGS/conformance-cuda-v2.xml"

    if [[ -n $SANITIZER ]]; then
        run_step memcheck 45 1 "$SANITIZER" --tool memcheck --leak-check full --error-exitcode 99 \
            "$M" conformance --require cuda --backend cuda "${sub[@]}"
        run_step racecheck 25 1 "$SANITIZER" --tool racecheck --error-exitcode 99 \
            "$M" conformance --require cuda --backend cuda "${small[@]}"
        run_step initcheck 25 1 "$SANITIZER" --tool initcheck --error-exitcode 99 \
            "$M" conformance --require cuda --backend cuda "${small[@]}"
        run_step memcheck-v2 45 1 "$SANITIZER" --tool memcheck --leak-check full --error-exitcode 99 \
            "$M" conformance --require cuda --backend cuda "${sub2[@]}"
        run_step racecheck-v2 25 1 "$SANITIZER" --tool racecheck --error-exitcode 99 \
            "$M" conformance --require cuda --backend cuda "${small2[@]}"
    else
        missing memcheck compute-sanitizer
        missing racecheck compute-sanitizer
        missing initcheck compute-sanitizer
        missing memcheck-v2 compute-sanitizer
        missing racecheck-v2 compute-sanitizer
    fi

    if [[ -n $NCU ]]; then
        run_step ncu 20 1 bash -c "'$NCU' --clock-control none --launch-count 40 --section LaunchStats --section Occupancy --section SpeedOfLight --csv --page details --log-file '$LOGS/ncu.csv' '$M' conformance --require cuda --backend cuda ${small[*]}"
    else
        missing ncu ncu
    fi

    OCL_ENV=()
    if opencl_env; then
        run_step opencl 30 0 env "${OCL_ENV[@]}" "$M" conformance --backend opencl --require opencl \
            --json "$LOGS/conformance-opencl.json" --junit "$LOGS/conformance-opencl.xml"
        run_step opencl-v2 30 0 env "${OCL_ENV[@]}" "$M" conformance --backend opencl --require opencl \
            --golden conformance/golden-v2 \
            --json "$LOGS/conformance-opencl-v2.json" --junit "$LOGS/conformance-opencl-v2.xml"
    else
        local s
        for s in opencl opencl-v2; do
            selected "$s" &&
                record "$s" "fail (no ICD loader in the pack, or no $( ((DRY)) && echo PoCL || echo libnvidia-opencl.so.1))" 0
        done
    fi

    # Device benches: FlashMLA's shapes and V3 experts, ceilings from the same run.
    local bench=("$M" bench --backend cuda --device-shapes --dtype bf16 --copy-mib 2048 --gemm-size 8192 --trace)
    run_step bench-mla 30 1 "${bench[@]}" --op mla_decode \
        --json "$LOGS/bench-mla.json" --markdown "$LOGS/bench-mla.md"
    run_step bench-experts 95 1 "${bench[@]}" --op moe_experts \
        --json "$LOGS/bench-experts.json" --markdown "$LOGS/bench-experts.md"
    run_step bench-v2 40 1 "${bench[@]}" --op mla_sparse_decode --op dsa_indexer_topk \
        --json "$LOGS/bench-v2.json" --markdown "$LOGS/bench-v2.md"

    # The torch peer: exit 3 = no torch (skipped), 4 = torch without a CUDA device.
    local py=${PYTHON:-python3}
    if command -v "$py" >/dev/null; then
        run_step torch-peer 50 0 env PYTHONUNBUFFERED=1 "$py" benches/peer/torch_peer.py \
            --golden conformance/golden --json "$LOGS/torch-peer.json" \
            --ours "$LOGS/bench-mla.json" --ours "$LOGS/bench-experts.json"
    else
        missing torch-peer python3
    fi

    # Nsight Compute's full section set on one launch of each bench kernel that has a speed
    # target (FlashMLA's memory-bound decode shape; the V3 experts at T 4096), for
    # docs/gpu-notes.md: where the time goes, measured rather than guessed.
    if [[ -n $NCU ]]; then
        local quick=("$M" bench --backend cuda --device-shapes --dtype bf16 --copy-mib 64 --gemm-size 1024)
        run_step profile-mla 60 1 "$NCU" --clock-control none --set full --csv --page details \
            -k regex:'^moemla_mla_decode_bf16$' --launch-count 1 --log-file "$LOGS/profile-mla.csv" \
            "${quick[@]}" --op mla_decode --filter "bf16 b=128 s_q=1 h_q=16 "
        run_step profile-experts 90 1 "$NCU" --clock-control none --set full --csv --page details \
            -k regex:'^moemla_moe_(gate_up|down)_bf16$' --launch-count 2 --log-file "$LOGS/profile-experts.csv" \
            "${quick[@]}" --op moe_experts --filter "T=4096 "
    else
        missing profile-mla ncu
        missing profile-experts ncu
    fi

    bundle
    summary
}

case ${1:-} in
pack)
    shift
    (($# == 0)) || die "usage: pack"
    cmd_pack
    ;;
run)
    shift
    cmd_run "$@"
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
