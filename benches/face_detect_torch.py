#!/usr/bin/env python3
"""The yardstick of benches/face_detect.rs: facenet-pytorch 2.6.0's MTCNN on the same
frames, on the CPU. The detector's code is read from the wheel that
scripts/get-face-detector.sh keeps in models/.downloads (not installed); it loads its own
weights from the wheel too. Needs torch and torchvision (and NumPy).

    face_detect_torch.py FRAMES.rgb --width W --height H --frames N --factor F --threads T --runs R

FRAMES.rgb holds N frames of H×W RGB bytes. Each is reduced by F as dfengine's
`face_boxes::detect_frame` does (each pixel the rounded mean of an F×F block), then all
are detected as one batch (`MTCNN.detect` on a list of equal-size frames runs each
pyramid level of P-Net on the whole batch). Prints JSON: median CPU-seconds of the process
and wall seconds over R runs after a warm-up, and the faces found.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types
import zipfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = os.path.join(ROOT, "models", ".downloads", "facenet_pytorch-2.6.0-py3-none-any.whl")

p = argparse.ArgumentParser()
p.add_argument("frames")
for k in ["width", "height", "frames_n", "factor", "threads", "runs"]:
    p.add_argument("--" + k.replace("_n", ""), dest=k, type=int, required=True)
a = p.parse_args()

if not os.path.exists(WHEEL):
    sys.exit(f"{WHEEL} missing: run scripts/get-face-detector.sh")
code = tempfile.mkdtemp()
with zipfile.ZipFile(WHEEL) as z:
    z.extractall(code)
# The package's __init__ pulls in the face-recognition model and its download helpers
# (requests, tqdm); the detector needs none of that.
pkg = types.ModuleType("facenet_pytorch")
pkg.__path__ = [os.path.join(code, "facenet_pytorch")]
sys.modules["facenet_pytorch"] = pkg
from facenet_pytorch.models.mtcnn import MTCNN  # noqa: E402

torch.set_num_threads(a.threads)
raw = np.fromfile(a.frames, dtype=np.uint8).reshape(a.frames_n, a.height, a.width, 3)
f = a.factor
if f > 1:
    h, w = a.height // f, a.width // f
    blocks = raw[:, : h * f, : w * f].astype(np.uint32).reshape(a.frames_n, h, f, w, f, 3).sum(axis=(2, 4))
    raw = ((blocks + f * f // 2) // (f * f)).astype(np.uint8)
frames = [np.ascontiguousarray(x) for x in raw]

m = MTCNN(min_face_size=20, thresholds=[0.6, 0.7, 0.7], keep_all=True, device="cpu")
with torch.no_grad():
    m.detect(frames[:2])
    cpu, wall, faces = [], [], 0
    for _ in range(a.runs):
        c0, w0 = time.process_time(), time.perf_counter()
        boxes, _ = m.detect(frames)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        faces = sum(0 if b is None else len(b) for b in boxes)
print(json.dumps({"cpu_s": sorted(cpu)[len(cpu) // 2], "wall_s": sorted(wall)[len(wall) // 2], "faces": faces}))
