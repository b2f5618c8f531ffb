#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc + ptxas + headers) from NVIDIA's PyPI wheels into
# .toolchain/cuda in the repository, for machines with no CUDA toolkit. build.rs finds it
# there when NVCC, CUDA_HOME and PATH have none.
#
# Idempotent: a stamp file records the pinned set; a second run with the same pins
# returns at once. Needs python3 with pip and access to PyPI.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.toolchain/cuda"
# One pinned set: the 13.0 toolkit. PTX from it needs a driver of the 580 series or newer.
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$dest/.installed"
want="${pins[*]}"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/nvcc" ]]; then
  echo "nvcc already installed: $dest/bin/nvcc"
  exit 0
fi

site="$root/.toolchain/site"
rm -rf "$site" "$dest"
mkdir -p "$site" "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$site" "${pins[@]}"

# The wheels scatter the toolkit over nvidia/cu13/{bin,include,lib,nvvm}; nvcc expects
# one CUDA_HOME with bin/, include/, lib64/ and nvvm/ side by side.
cu="$site/nvidia/cu13"
if [[ ! -d "$cu" ]]; then
  echo "install-nvcc: the wheels did not contain nvidia/cu13 (layout changed?)" >&2
  exit 1
fi
for d in bin include lib nvvm; do
  [[ -d "$cu/$d" ]] && ln -s "$cu/$d" "$dest/$d"
done
ln -s lib "$dest/lib64"
chmod +x "$dest"/bin/* "$dest"/nvvm/bin/* 2>/dev/null || true

"$dest/bin/nvcc" --version | tail -n 2
echo "$want" > "$stamp"
echo "nvcc installed: $dest/bin/nvcc"
