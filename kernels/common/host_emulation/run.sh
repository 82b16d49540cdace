#!/usr/bin/env bash
# Runs every moemla kernel on the host emulator against double-precision references, under
# AddressSanitizer (an out-of-bounds read or write of any tensor or workspace fails):
#   - portable paths with 32-lane warps (CUDA's lane count),
#   - portable paths with 64-lane wavefronts (gfx9 / Hygon DCU),
#   - the mma.sync tensor-core paths, on an emulation of m16n8k16 from the PTX ISA tables.
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
for variant in "32" "64" "32 mma"; do
    set -- $variant
    defs=(-D__AMDGCN_WAVEFRONT_SIZE="$1")
    name="warp$1"
    if [[ "${2:-}" == mma ]]; then
        defs+=(-DMOEMLA_EMULATE_MMA)
        name+="-mma"
    fi
    "$CXX" "${flags[@]}" "${defs[@]}" "$here/kernels_test.cpp" -o "$out/$name" -lpthread
    "$out/$name" ${sections[@]+"${sections[@]}"} || status=1
    "$CXX" "${flags[@]}" "${defs[@]}" "$here/cache_write_test.cpp" -o "$out/cache_write-$name" -lpthread
    "$out/cache_write-$name" || status=1
done
exit $status
