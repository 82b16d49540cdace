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
# Needs clang++ (C++20; CXX overrides, default clang++-19). About a minute on two cores.
# Arguments name the kernels_test sections to run (route, experts, experts_shared, mla, ...;
# default all): `run.sh experts_shared`.
set -euo pipefail
sections=("$@")
here="$(cd "$(dirname "$0")" && pwd)"
CXX="${CXX:-clang++-19}"
out="${TMPDIR:-/tmp}/moemla-kernel-emulation"
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -w)
status=0
for variant in "32" "64" "32 mma" "32 mma fp8"; do
    set -- $variant
    defs=(-D__AMDGCN_WAVEFRONT_SIZE="$1")
    name="warp$1"
    run_sections=(${sections[@]+"${sections[@]}"})
    if [[ "${2:-}" == mma ]]; then
        defs+=(-DMOEMLA_EMULATE_MMA)
        name+="-mma"
    fi
    if [[ "${3:-}" == fp8 ]]; then
        defs+=(-DMOEMLA_EMULATE_MMA_FP8)
        name+="-fp8"
        [[ ${#run_sections[@]} -gt 0 ]] || run_sections=(experts_v2)
    fi
    "$CXX" "${flags[@]}" "${defs[@]}" "$here/kernels_test.cpp" -o "$out/$name" -lpthread
    "$out/$name" ${run_sections[@]+"${run_sections[@]}"} || status=1
    if [[ "${3:-}" != fp8 ]]; then  # mla_cache_write has no FP8 GEMM
        "$CXX" "${flags[@]}" "${defs[@]}" "$here/cache_write_test.cpp" -o "$out/cache_write-$name" -lpthread
        "$out/cache_write-$name" || status=1
    fi
done
exit $status
