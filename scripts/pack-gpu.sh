#!/usr/bin/env bash
# Builds the GPU test and bench binaries without FFmpeg (a GPU box used for kernel work
# need not have it) and packs them, stripped, into .gpu/ (git-ignored) with run.sh, which
# runs every GPU test and bench there and writes logs under $OUT (or ./gpu-logs):
#
#   scripts/pack-gpu.sh                 # here
#   bash .gpu/run.sh                    # on the GPU machine, from the repository root
#
# Every GPU test's name ends in `_cuda`: run.sh runs those (with DFENGINE_REQUIRE_GPU=1,
# so a GPU test that cannot find its device fails instead of skipping) and the library's
# unit tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
features=(--release --no-default-features --features cuda)
rm -rf .gpu && mkdir -p .gpu
json=$(cargo test "${features[@]}" --no-run --message-format=json 2>/dev/null)
bench_json=$(cargo bench --no-default-features --features cuda --no-run --message-format=json 2>/dev/null)
pick() { # name kind: the executable of test/bench target `name`
    printf '%s\n%s\n' "$json" "$bench_json" | python3 -c '
import json, sys
name, kind = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == name and kind in t.get("kind", []):
        print(m["executable"]); break' "$1" "$2"
}
for t in memory_pool_cuda monitor preprocess gemm conv eltwise optim pooling norm loss cuda_backend; do strip -o ".gpu/test_$t" "$(pick "$t" test)"; done
strip -o .gpu/test_lib "$(pick dfengine lib)"
strip -o .gpu/bench_cuda_kernels "$(pick cuda_kernels bench)"
cp benches/torch_yardstick.py .gpu/
cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# Every GPU test (the `_cuda` ones; a missing GPU fails them) and bench, logs under $OUT
# (or ./gpu-logs); a table of results last.
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"; cd "$(dirname "$0")"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
export DFENGINE_REQUIRE_GPU=1
status=0
for t in test_*; do
    filter=_cuda; [ "$t" = test_lib ] && filter=
    ./"$t" ${filter:+"$filter"} --test-threads=1 --nocapture > "$out/$t.log" 2>&1; rc=$?; [ $rc -ne 0 ] && status=1
    echo "$t: exit $rc, $(grep -c '^test .* ok$' "$out/$t.log") ok, $(grep -c 'skipped' "$out/$t.log") skipped"
done
./bench_cuda_kernels 2>&1 | tee "$out/bench_cuda_kernels.log"
PYTHONUNBUFFERED=1 python3 torch_yardstick.py --out "$out/yardstick.json" 2>&1 | tee "$out/yardstick.log" | tail -20
exit $status
RUN
chmod +x .gpu/run.sh
du -sh .gpu
