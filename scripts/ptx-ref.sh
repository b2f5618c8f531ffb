#!/usr/bin/env bash
# Writes nvcc's PTX for every kernels/*.cu into target/ptx-ref/, with the flags build.rs
# uses: the real kernels the software GPU's own tests and benches run (softgpu/tests,
# softgpu/benches). CI runs it before them with SOFTGPU_REQUIRE_PTX=1, so that a test
# that finds no PTX fails instead of skipping.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${NVCC:-$root/.toolchain/cuda/bin/nvcc}
[[ -x $nvcc ]] || { echo "ptx-ref: no nvcc at $nvcc (scripts/install-nvcc.sh, or set NVCC)" >&2; exit 1; }
out=$root/target/ptx-ref
rm -rf "$out" && mkdir -p "$out"
for src in "$root"/kernels/*.cu; do
  "$nvcc" -ptx -O3 -std=c++17 -lineinfo -arch="${DFENGINE_CUDA_ARCH:-compute_80}" -I "$root/kernels" \
    "$src" -o "$out/$(basename "$src" .cu).ptx" &
done
wait
echo "ptx-ref: $(ls "$out"/*.ptx | wc -l) modules in $out" >&2
