#!/usr/bin/env python3
"""PyTorch AMP's activation memory per frame and the largest micro-batch of clips that fits
a memory budget by PyTorch AMP's accounting: the yardstick of issue 16, on the CPU.

    /tmp/torchvenv/bin/python benches/torch_saved_bytes.py [--out benches/torch_saved_bytes.json]

Saved bytes. The seed's clip classifier (a torchvision ResNet without its fc, the mean
over the clip's frames, Linear(features, 1)), channels_last, in training mode, forward
under `torch.autocast(device_type="cpu", dtype=torch.float16)` (bfloat16 where this torch
has no FP16 autocast on the CPU; same bytes, the output says which). Every tensor autograd
saves for backward passes through `torch.autograd.graph.saved_tensors_hooks`; each
storage is counted once, by its data pointer, at its full size (FP16 activations, FP32
batch-norm statistics, the int64 indices of the max pool). Per frame at the margin:
(bytes saved for one clip of 2·T frames − for one clip of T frames) / T, so what a step
saves whatever its batch (autocast's FP16 weight copies) cancels. Also printed: the
issue's way of counting, everything saved for one clip of `--frames` frames / frames,
which spreads those FP16 weight copies over the clip (ResNet-18: 12.7 MiB, ResNet-50:
44.6 in issue 16); the budget accounting below counts the copies once, as weights.

Largest micro-batch. Clips of `--frames` frames of `--side`² in `--budget-gib` GiB, by
the accounting

    saved activations (per frame above × frames × clips)
  + FP32 weights (4 B/param) + FP32 gradients (4 B/param)
  + AdamW state (exp_avg, exp_avg_sq: 8 B/param) + autocast's FP16 weight copy (2 B/param)
  + the input batch (FP32, clips × frames × 3 × side², as the model takes it).

No allocator slack, cuDNN workspace or transient backward tensors are counted: PyTorch
is given its best case. dfengine's side of the comparison (`cargo bench --bench
activation_memory`) counts its planner's workspace and the u8 frames too.
"""

import argparse
import datetime
import json
import platform
import sys

import torch
import torch.nn as nn
import torchvision

MIB = float(1 << 20)
GIB = 1 << 30


class ClipClassifier(nn.Module):
    """The seed's model: B×T frames through a torchvision ResNet, mean over T, one logit."""

    def __init__(self, arch):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        feats = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone, self.fc = net, nn.Linear(feats, 1)

    def forward(self, clips):
        b, t = clips.shape[:2]
        f = self.backbone(clips.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return self.fc(f.view(b, t, -1).mean(1)).squeeze(1)


def autocast_dtype():
    """FP16 if this torch autocasts convolutions to it on the CPU, else bfloat16."""
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 8, 8).to(memory_format=torch.channels_last)
    try:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            if conv(x).dtype == torch.float16:
                return torch.float16
    except (RuntimeError, AssertionError):
        pass
    return torch.bfloat16


def saved_bytes(model, frames, side, dtype):
    """Bytes autograd saves for one clip of `frames` frames: (total, by dtype), each
    storage once."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen.setdefault(s.data_ptr(), (s.nbytes(), str(t.dtype).removeprefix("torch.")))
        return t

    clips = torch.randn(1, frames, 3, side, side)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type="cpu", dtype=dtype):
            logits = model(clips)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(1))
    by_dtype = {}
    for nbytes, dt in seen.values():
        by_dtype[dt] = by_dtype.get(dt, 0) + nbytes
    del loss, logits
    return sum(by_dtype.values()), by_dtype


def measure(arch, frames_per_clip, side, budget, dtype, t):
    torch.manual_seed(0)
    model = ClipClassifier(arch).to(memory_format=torch.channels_last).train()
    params = sum(p.numel() for p in model.parameters())
    one, one_by = saved_bytes(model, t, side, dtype)
    two, two_by = saved_bytes(model, 2 * t, side, dtype)
    per_frame = (two - one) / t
    per_frame_by = {k: (two_by.get(k, 0) - one_by.get(k, 0)) / t for k in two_by}
    clip, _ = saved_bytes(model, frames_per_clip, side, dtype)
    constant = params * (4 + 4 + 8 + 2)
    # The clip's frames and their saved activations.
    per_clip = frames_per_clip * (per_frame + 3 * side * side * 4)
    clips = int((budget - constant) // per_clip) if budget > constant else 0
    return {
        "arch": arch,
        "params": params,
        "saved_per_frame_bytes": per_frame,
        "saved_per_frame_mib": per_frame / MIB,
        "saved_per_frame_mib_by_dtype": {k: v / MIB for k, v in sorted(per_frame_by.items())},
        "saved_one_clip_per_frame_mib": clip / frames_per_clip / MIB,
        "per_step_constant_bytes": constant,
        "per_clip_bytes": per_clip,
        "largest_micro_batch": clips,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benches/torch_saved_bytes.json")
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--frames", type=int, default=16, help="frames per clip")
    ap.add_argument("--budget-gib", type=float, default=12.0)
    ap.add_argument("--margin-frames", type=int, default=2, help="T of the (2T − T) / T margin")
    ap.add_argument("--archs", default="resnet18,resnet34,resnet50")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = autocast_dtype()
    budget = int(args.budget_gib * GIB)
    res = {
        "source": "benches/torch_saved_bytes.py",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "autocast_dtype": str(dtype).removeprefix("torch."),
        "side": args.side,
        "frames_per_clip": args.frames,
        "budget_bytes": budget,
        "models": [],
    }
    print(f"# torch {res['torch']}, torchvision {res['torchvision']}, CPU autocast {res['autocast_dtype']}, "
          f"channels_last, {args.side}²; micro-batch of {args.frames}-frame clips in {args.budget_gib:g} GiB")
    print(f"{'model':<10} {'saved MiB/frame':>16} {'of which':<30} {'1 clip / frames':>16} {'params':>11} "
          f"{'clips in budget':>16}")
    for arch in args.archs.split(","):
        m = measure(arch, args.frames, args.side, budget, dtype, args.margin_frames)
        res["models"].append(m)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in m["saved_per_frame_mib_by_dtype"].items() if abs(v) > 0.005)
        print(f"{arch:<10} {m['saved_per_frame_mib']:>16.2f} {parts:<30} {m['saved_one_clip_per_frame_mib']:>16.2f} "
              f"{m['params']:>11} "
              f"{m['largest_micro_batch']:>16}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
