#!/usr/bin/env python3
"""The yardsticks dfengine's GPU figures stand beside, measured on the same GPU in the
same run: device-to-device copy bandwidth, cuBLAS fp16 GEMM (through torch.matmul),
cuDNN convolution per ResNet layer (fwd, dgrad, wgrad; channels_last fp16,
cudnn.benchmark), and whole PyTorch training steps of the seed's clip classifier
(throughput and peak reserved memory, which calibrate dfengine's memory planner).

    python3 benches/torch_yardstick.py [--out yardstick.json] [--quick]

Every time is the median of CUDA-event-timed repeats after a warm-up; inputs are random
(never zeros: they run faster than real data on some GPUs). Needs PyTorch with CUDA and
torchvision.
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn
import torchvision


def median_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(nbytes=2 << 30):
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return {"bytes": nbytes, "ms": ms, "gbps_read_plus_write": 2 * nbytes / ms / 1e6}


def gemm(m, n, k):
    a = torch.randn(m, k, device="cuda", dtype=torch.float16)
    b = torch.randn(k, n, device="cuda", dtype=torch.float16)
    ms = median_ms(lambda: torch.matmul(a, b), reps=20 if m * n * k < 2**33 else 10)
    return {"m": m, "n": n, "k": k, "ms": ms, "tflops": 2 * m * n * k / ms / 1e9}


def conv_layers(model, side):
    """Every distinct Conv2d of `model` with its input shape, in execution order."""
    seen, layers = set(), []

    def hook(mod, inp, _out):
        key = (tuple(inp[0].shape[1:]), mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0])
        if key not in seen:
            seen.add(key)
            layers.append((mod.__name__, *key))

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            mod.__name__ = name
            handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.randn(1, 3, side, side, device="cuda"))
    for h in handles:
        h.remove()
    return layers


def conv_bench(name, in_shape, cout, k, stride, pad, batch):
    c, h, w = in_shape
    x = torch.randn(batch, c, h, w, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    wt = torch.randn(cout, c, k, k, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    y = torch.nn.functional.conv2d(x, wt, stride=stride, padding=pad)
    dy = torch.randn_like(y)
    p, q = y.shape[2], y.shape[3]
    flops = 2 * batch * p * q * cout * c * k * k

    def bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, wt, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask
        )

    out = {"layer": name, "n": batch, "c": c, "h": h, "w": w, "k": cout, "r": k, "stride": stride, "pad": pad,
           "p": p, "q": q, "gemm_mnk": [batch * p * q, cout, c * k * k]}
    for direction, fn in [
        ("fwd", lambda: torch.nn.functional.conv2d(x, wt, stride=stride, padding=pad)),
        ("dgrad", bwd([True, False, False])),
        ("wgrad", bwd([False, True, False])),
    ]:
        ms = median_ms(fn, reps=10)
        out[direction] = {"ms": ms, "tflops": flops / ms / 1e9}
    del x, wt, y, dy
    torch.cuda.empty_cache()
    return out


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
        f = self.backbone(clips.flatten(0, 1)).view(b, t, -1).mean(1)
        return self.fc(f).squeeze(1)


def train_step_bench(arch, batch, frames, side, steps=10):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = ClipClassifier(arch).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler()
    clips = torch.randn(batch, frames, 3, side, side, device="cuda")
    labels = torch.randint(0, 2, (batch,), device="cuda").float()

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.binary_cross_entropy_with_logits(model(clips), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    ms = median_ms(step, reps=steps, warmup=3)
    out = {"arch": arch, "batch": batch, "frames": frames, "side": side, "ms_per_step": ms,
           "clips_per_s": batch / ms * 1e3,
           "peak_allocated": torch.cuda.max_memory_allocated(),
           "peak_reserved": torch.cuda.max_memory_reserved()}
    del model, opt, clips
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="yardstick.json")
    ap.add_argument("--quick", action="store_true", help="fewer shapes, for a smoke run")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(0)
    res = {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    print(f"# {res['gpu']}, {res['sms']} SMs, torch {res['torch']}, CUDA {res['cuda']}, cuDNN {res['cudnn']}")

    res["copy"] = copy_bandwidth()
    print(f"copy D2D {res['copy']['gbps_read_plus_write']:.0f} GB/s (read+write)")

    sizes = [1024, 4096] if args.quick else [1024, 4096, 8192]
    res["gemm"] = [gemm(s, s, s) for s in sizes]
    for g in res["gemm"]:
        print(f"cuBLAS fp16 {g['m']}x{g['n']}x{g['k']}: {g['tflops']:.1f} TFLOP/s")

    res["conv"] = []
    frames_batch = 32 * 16
    for arch in ["resnet18"] if args.quick else ["resnet18", "resnet50"]:
        model = getattr(torchvision.models, arch)(weights=None).cuda().eval()
        for (name, in_shape, cout, k, stride, pad) in conv_layers(model, 224):
            r = conv_bench(name, in_shape, cout, k, stride, pad, 64 if args.quick else frames_batch)
            r["arch"] = arch
            res["conv"].append(r)
            # The GEMM of the same M/N/K, so the conv's ratio to it can be read off.
            m, n, kk = r["gemm_mnk"]
            r["gemm_same_mnk"] = gemm(m, n, kk)["tflops"]
            print(f"cuDNN {arch} {name:22s} N={r['n']} {r['c']}x{r['h']}x{r['w']} -> {cout} k{k}s{stride}: "
                  f"fwd {r['fwd']['tflops']:6.1f} dgrad {r['dgrad']['tflops']:6.1f} "
                  f"wgrad {r['wgrad']['tflops']:6.1f} TFLOP/s (GEMM {r['gemm_same_mnk']:6.1f})")
        del model

    res["train"] = []
    runs = [("resnet18", 6, 16, 224), ("resnet18", 12, 16, 224), ("resnet50", 6, 16, 224)]
    for arch, b, t, side in runs[:1] if args.quick else runs:
        r = train_step_bench(arch, b, t, side)
        res["train"].append(r)
        print(f"PyTorch AMP train step {arch} {b}x{t}x{side}²: {r['clips_per_s']:.1f} clips/s, "
              f"peak allocated {r['peak_allocated'] / 2**30:.2f} GiB, reserved {r['peak_reserved'] / 2**30:.2f} GiB")

    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
