#!/usr/bin/env bash
# gpu-check.sh — the one command that checks the CUDA backend on an NVIDIA GPU (sm_80+).
#
#   scripts/gpu-check.sh            # from the repository root, on a machine with a GPU
#
# Steps (stops at the first failure):
#   1. find NVRTC (MOEMLA_NVRTC_LIB, else the CUDA toolkit's lib64, else the PyPI wheel
#      nvidia-cuda-nvrtc-cu12/-cu13 if installed) and print the device (nvidia-smi);
#   2. cargo test -p moemla-cuda: the NVRTC compile test for sm_80/sm_90 and the shared op
#      suite on the GPU (MOEMLA_REQUIRE=cuda: a missing device fails instead of skipping);
#   3. build the `moemla` CLI (release);
#   4. `moemla devices`, then `moemla conformance --require cuda` on the committed goldens
#      (every case must pass; reports land in $OUT_DIR, default target/gpu-check);
#   5. the same conformance run under `compute-sanitizer --tool memcheck` (must be clean);
#   6. the CUDA benches: `moemla bench --backend cuda`.
# Kernels are compiled by NVRTC to CUBIN for the device's exact sm, so a toolkit newer or
# older than the driver is fine as long as NVRTC knows the device's arch.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-target/gpu-check}"
mkdir -p "$OUT_DIR"

if [[ -z "${MOEMLA_NVRTC_LIB:-}" ]]; then
    for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        if [[ -n "$root" ]] && compgen -G "$root/lib64/libnvrtc.so*" >/dev/null; then
            export MOEMLA_NVRTC_LIB="$root/lib64"
            break
        fi
    done
fi
if [[ -z "${MOEMLA_NVRTC_LIB:-}" ]] && command -v python3 >/dev/null; then
    wheel_lib="$(python3 -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null || true)"
    [[ -n "$wheel_lib" && -d "$wheel_lib" ]] && export MOEMLA_NVRTC_LIB="$wheel_lib"
fi
echo "== NVRTC: ${MOEMLA_NVRTC_LIB:-<dynamic loader default>}"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv || true

echo "== NVRTC compile test (sm_80, sm_90) and the shared op suite on the GPU"
MOEMLA_REQUIRE_TOOLCHAINS=nvrtc MOEMLA_REQUIRE=cuda cargo test --release -p moemla-cuda

echo "== build"
cargo build --release -p moemla
MOEMLA=target/release/moemla

echo "== devices"
"$MOEMLA" devices

echo "== conformance (cuda required)"
"$MOEMLA" conformance --require cuda --backend cuda \
    --json "$OUT_DIR/conformance.json" --junit "$OUT_DIR/conformance.xml"

echo "== conformance under compute-sanitizer memcheck"
SANITIZER="${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
"$SANITIZER" --tool memcheck --error-exitcode 99 --leak-check full \
    "$MOEMLA" conformance --require cuda --backend cuda --json "$OUT_DIR/conformance-memcheck.json"

echo "== CUDA benches"
"$MOEMLA" bench --backend cuda --json "$OUT_DIR/bench.json" --markdown "$OUT_DIR/bench.md"
"$MOEMLA" bench --backend cuda --device-shapes --dtype bf16 \
    --json "$OUT_DIR/bench-device.json" --markdown "$OUT_DIR/bench-device.md"

echo "== gpu-check passed; reports in $OUT_DIR"
