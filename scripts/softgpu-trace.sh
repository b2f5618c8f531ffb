#!/usr/bin/env bash
# Sums the per-launch lines that SOFTGPU_TRACE=1 makes softgpu print (stdin or files):
# per kernel, launches, wall seconds, lane-instructions and lane-instructions per second,
# dearest first, then the total — where a run's time goes on the software GPU.
#
#   SOFTGPU_TRACE=1 scripts/softgpu.sh run CMD... 2> trace.log; scripts/softgpu-trace.sh trace.log
set -euo pipefail
awk '
/^softgpu trace: / {
  name = $3
  for (i = 1; i <= NF; i++) {
    if ($i == "us") us = $(i - 1)
    if ($i == "lane-instructions") li = $(i - 1)
  }
  n[name]++; t[name] += us; l[name] += li; T += us; L += li; N++
}
END {
  printf "%-40s %8s %10s %16s %12s\n", "kernel", "launches", "seconds", "lane-instr", "lane-instr/s"
  for (k in n)
    printf "%-40s %8d %10.3f %16.0f %12.3g\n", k, n[k], t[k] / 1e6, l[k], (t[k] > 0 ? l[k] / (t[k] / 1e6) : 0) | "sort -k3 -nr"
  close("sort -k3 -nr")
  printf "%-40s %8d %10.3f %16.0f %12.3g\n", "total", N, T / 1e6, L, (T > 0 ? L / (T / 1e6) : 0)
}' "$@"
