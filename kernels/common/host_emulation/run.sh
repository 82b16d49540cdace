#!/usr/bin/env bash
# Runs every moemla kernel on the host emulator against double-precision references, under
# AddressSanitizer (an out-of-bounds read or write of any tensor or workspace fails):
#   - portable paths with 32-lane warps (CUDA's lane count),
#   - portable paths with 64-lane wavefronts (gfx9 / Hygon DCU),
#   - the mma.sync tensor-core paths as on sm_80, on an emulation of m16n8k16 from the PTX
#     ISA tables (w8a8 experts dequantize their FP8 codes into bf16/f16 tiles),
#   - the sm_89+ build: w8a8 experts multiply the FP8 codes on an emulation of m16n8k32
#     e4m3 (PTX ISA tables). Only kernels_test's w8a8 section (experts_v2) differs there,
#     so that variant runs experts_v2 alone (or the sections asked for).
# Needs clang++ (C++20; CXX overrides, default clang++-19). Builds run in parallel, one per core.
# Arguments name the kernels_test sections to run (route, experts, experts_shared, mla, ...;
# default all): `run.sh experts_shared`.
set -euo pipefail
sections=("$@")
here="$(cd "$(dirname "$0")" && pwd)"
CXX="${CXX:-clang++-19}"
out="${TMPDIR:-/tmp}/moemla-kernel-emulation"
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -w)
# One (binary, source, defines, sections) per line; built in parallel (one clang per core),
# then run one after another so their reports stay in order. mla_cache_write has no
# tensor-core path, so it runs at 32 and 64 lanes only.
all=("${sections[@]+"${sections[@]}"}")
fp8=("${sections[@]+"${sections[@]}"}")
[[ ${#fp8[@]} -gt 0 ]] || fp8=(experts_v2)
plan=(
    "warp32|kernels_test|-D__AMDGCN_WAVEFRONT_SIZE=32|${all[*]-}"
    "warp64|kernels_test|-D__AMDGCN_WAVEFRONT_SIZE=64|${all[*]-}"
    "warp32-mma|kernels_test|-D__AMDGCN_WAVEFRONT_SIZE=32 -DMOEMLA_EMULATE_MMA|${all[*]-}"
    "warp32-mma-fp8|kernels_test|-D__AMDGCN_WAVEFRONT_SIZE=32 -DMOEMLA_EMULATE_MMA -DMOEMLA_EMULATE_MMA_FP8|${fp8[*]}"
    "cache_write-warp32|cache_write_test|-D__AMDGCN_WAVEFRONT_SIZE=32|"
    "cache_write-warp64|cache_write_test|-D__AMDGCN_WAVEFRONT_SIZE=64|"
)
cores="$(nproc 2>/dev/null || echo 2)"
build_status=0
pids=()
for entry in "${plan[@]}"; do
    IFS='|' read -r name src defs _ <<<"$entry"
    # shellcheck disable=SC2086 # defs is a list of -D flags
    "$CXX" "${flags[@]}" $defs "$here/$src.cpp" -o "$out/$name" -lpthread &
    pids+=("$!")
    if [[ ${#pids[@]} -ge $cores ]]; then
        wait "${pids[0]}" || build_status=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || build_status=1; done
[[ $build_status -eq 0 ]] || { echo "host emulation: a build failed" >&2; exit 1; }
status=0
for entry in "${plan[@]}"; do
    IFS='|' read -r name _ _ run_sections <<<"$entry"
    # shellcheck disable=SC2086 # the section names are words
    "$out/$name" $run_sections || status=1
done
exit $status
