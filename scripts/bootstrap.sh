#!/usr/bin/env bash
# Makes a fresh Debian/Ubuntu machine ready to build dfengine: FFmpeg's development
# packages (for the `video` feature), pkg-config and clang (for ffmpeg-next's bindings),
# then the CUDA compiler into .toolchain/ (scripts/install-nvcc.sh). Quick when all is
# there already. Rust itself (cargo) is expected to be installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

packages=(pkg-config clang libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev
          libavdevice-dev libswscale-dev libswresample-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$root/scripts/install-nvcc.sh"
