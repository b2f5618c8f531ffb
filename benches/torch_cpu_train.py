#!/usr/bin/env python3
"""PyTorch CPU training throughput, the yardstick of benches/cpu_train_vs_torch.rs:
torchvision ResNet-18 with one output (a real/fake logit), FP32, channels_last, AdamW,
BCE-with-logits, on one fixed random input batch; `--threads` intra-op threads.

    python3 benches/torch_cpu_train.py --side 112 --batch 32 --steps 4 --threads 2

Prints one line of JSON: {"img_per_s": ..., "step_s": [...], "torch": "..."}. Exits with
status 3 and a line on stderr when torch or torchvision is missing.
"""

import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"torch or torchvision missing: {e}", file=sys.stderr)
        sys.exit(3)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.side, a.side).to(memory_format=torch.channels_last)
    y = (torch.arange(a.batch) % 2).float().unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({"img_per_s": a.batch / med, "step_s": times, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
