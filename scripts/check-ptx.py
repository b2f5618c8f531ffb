#!/usr/bin/env python3
"""Assembles every embedded PTX module with ptxas for the real GPUs dfengine targets
(sm_89: RTX 4070 class; sm_90: H100/H200) and reports registers, spills and shared memory
per kernel. Fails if ptxas rejects any module; with --no-spills also if a kernel spills.

The PTX is the one cargo just built (found through cargo's build-script output), so the
check covers exactly what the binary embeds. Usage:
    scripts/check-ptx.py [--report FILE] [--no-spills] [-- extra cargo build args]
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ["sm_89", "sm_90"]


def find_ptxas() -> Path:
    candidates = []
    if os.environ.get("PTXAS"):
        candidates.append(Path(os.environ["PTXAS"]))
    if os.environ.get("NVCC"):
        candidates.append(Path(os.environ["NVCC"]).parent / "ptxas")
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "ptxas")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidates.append(Path(d) / "ptxas")
    candidates.append(ROOT / ".toolchain/cuda/bin/ptxas")
    for c in candidates:
        if c.is_file():
            return c
    sys.exit("check-ptx: no ptxas found (PTXAS, NVCC, CUDA_HOME, PATH, .toolchain); run scripts/install-nvcc.sh")


def ptx_dir(cargo_args) -> Path:
    out = subprocess.run(
        ["cargo", "build", "--message-format=json", *cargo_args],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "build-script-executed" and "dfengine" in msg.get("package_id", ""):
            d = Path(msg["out_dir"]) / "ptx"
            if any(d.glob("*.ptx")):
                return d
            sys.exit(f"check-ptx: {d} holds no PTX: the build found no nvcc")
    sys.exit("check-ptx: cargo reported no dfengine build script output")


ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def assemble(ptxas: Path, ptx: Path, arch: str):
    res = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(ptx), "-o", os.devnull],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        print(res.stdout, file=sys.stderr)
        sys.exit(f"check-ptx: ptxas -arch={arch} rejected {ptx.name}")
    rows, current = [], None
    for line in res.stdout.splitlines():
        if m := ENTRY.search(line):
            current = {"module": ptx.stem, "kernel": m.group(1), "arch": arch}
            rows.append(current)
        elif current and (m := STACK.search(line)):
            current.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif current and (m := USED.search(line)):
            current.update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", type=Path, default=ROOT / "target/ptxas-report.txt")
    ap.add_argument("--no-spills", action="store_true", help="fail when any kernel spills")
    ap.add_argument("cargo_args", nargs="*")
    args = ap.parse_args()
    ptxas = find_ptxas()
    rows = []
    for ptx in sorted(ptx_dir(args.cargo_args).glob("*.ptx")):
        for arch in ARCHS:
            rows.extend(assemble(ptxas, ptx, arch))
    header = f"{'module':<12} {'kernel':<32} {'arch':<6} {'regs':>5} {'smem':>7} {'stack':>6} {'spill st':>9} {'spill ld':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['module']:<12} {r['kernel']:<32} {r['arch']:<6} {r.get('regs', 0):>5} {r.get('smem', 0):>7} "
                     f"{r.get('stack', 0):>6} {r.get('spill_st', 0):>9} {r.get('spill_ld', 0):>9}")
    report = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report, end="")
    print(f"ptxas ({ptxas}) accepted {len(rows)} kernel builds for {', '.join(ARCHS)}; report in {args.report}")
    spilling = [r for r in rows if r.get("spill_st", 0) or r.get("spill_ld", 0)]
    if spilling and args.no_spills:
        sys.exit("check-ptx: spills in " + ", ".join(f"{r['kernel']} ({r['arch']})" for r in spilling))


if __name__ == "__main__":
    main()
