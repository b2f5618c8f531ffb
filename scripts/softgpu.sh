#!/usr/bin/env bash
# Builds the software GPU (softgpu/, release) and lays out target/softgpu/ with the
# names cudarc and nvml-wrapper dlopen: libcuda.so, libcuda.so.1 and libnvidia-ml.so.1,
# all symlinks to the one libsoftgpu.so, so the driver and NVML share one process-wide
# state (glibc's dlopen recognises the same file under another name and returns the
# object already loaded).
#
#   scripts/softgpu.sh             build; print `export LD_LIBRARY_PATH=...` (eval-able)
#   scripts/softgpu.sh run CMD...  build, then run CMD with that LD_LIBRARY_PATH
#
# The device is set by SOFTGPU_SM_COUNT (default 8) and SOFTGPU_MEMORY (bytes or
# KiB/MiB/GiB, default 16GiB), read when the program first initialises CUDA or NVML;
# SOFTGPU_FILL=255 fills new device memory with NaNs instead of zeros (CI's GPU tests run
# so: a result that reads memory nothing wrote fails instead of passing on zeros).
# CARGO_TARGET_DIR and CARGO_BUILD_JOBS are honoured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

cargo build --manifest-path "$root/Cargo.toml" -p softgpu --release >&2
built=${CARGO_TARGET_DIR:-$root/target}/release/libsoftgpu.so
out=$root/target/softgpu
mkdir -p "$out"
# Copy, then rename over: a running program keeps the library it has mapped.
cp "$built" "$out/.libsoftgpu.so.new"
mv -f "$out/.libsoftgpu.so.new" "$out/libsoftgpu.so"
for name in libcuda.so libcuda.so.1 libnvidia-ml.so.1; do
  ln -sfn libsoftgpu.so "$out/$name"
done
path="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [[ ${1:-} == run ]]; then
  shift
  (($#)) || { echo "usage: $0 run CMD..." >&2; exit 2; }
  echo "softgpu: LD_LIBRARY_PATH=$path" >&2
  LD_LIBRARY_PATH=$path exec "$@"
fi
echo "export LD_LIBRARY_PATH=$path"
