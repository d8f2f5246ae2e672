#!/usr/bin/env bash
# Runs on the GPU machine (copied to .gpu/run.sh by scripts/gpu-check.sh). One call:
#   bash .gpu/run.sh all
# in this order, each step under its own timeout (the sum, 505 s, keeps the call within 9
# minutes on an H200 with the unpacking and the build of the dev harness):
#   1. the libraries resolve; the GPU
#   2. dev/cuda harness: validation first (the kernels against its CPU reference), then v4
#      (the baseline, dev/cuda/weight_v4.cu) vs the library's kernels (kernels/weight.cu) vs
#      a device-to-device copy, timed side by side
#   3. the library's CUDA tests: equivalence (GPU vs CPU, the long rows), ops, boundary,
#      8 host threads and the 2^31-element row, VarMapDropout, N:M
#   4. compute-sanitizer memcheck and racecheck on a reduced set of the equivalence cases
#   5. the benchmark against copy and PyTorch (kthvalue + uniform + where)
#   6. a short table: every step's status and time, then the benchmark summary
# Logs go to $OUT (or /tmp/td-out).
set -u
profile=${1:-all}
[ "$profile" = all ] || { echo "usage: bash .gpu/run.sh all" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/td-out}; mkdir -p "$OUT"
T0=$(date +%s)
for f in .gpu/*.xz; do xz -d -f "$f"; done
bins="equivalence ops boundary cuda_threads varmap nm gpu_bench"
for b in $bins; do chmod +x ".gpu/$b"; done
chmod +x .gpu/find-runtime-libs.sh
export LD_LIBRARY_PATH=$(.gpu/find-runtime-libs.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
status=()
missing=0
for b in $bins; do ldd ".gpu/$b" | grep -q 'not found' && { missing=1; status+=("ldd $b: MISSING LIBRARIES"); }; done
[ $missing = 0 ] && status+=("ldd: every binary resolves")
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
run() { # name timeout command...
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? e=$(( $(date +%s) - s ))
  status+=("$(printf '%-26s rc=%-3s %4ss  %s' "$name" "$rc" "$e" "$(grep -E 'test result|ERROR SUMMARY|RACECHECK SUMMARY|validation|MISMATCH' "$OUT/$name.log" | head -3 | tr '\n' ' ' | cut -c1-100)")")
}
# 2. The dev harness (validation first, then v4 vs the library's kernels vs copy).
if nvcc -O3 -std=c++17 -lineinfo -arch=sm_90 -Xptxas -v -o dev/cuda/td dev/cuda/targeted_dropout.cu > "$OUT/dev_build.log" 2>&1; then
  run dev_validate_and_time 150 dev/cuda/td
else
  status+=("dev harness: BUILD FAILED (see $OUT/dev_build.log)")
fi
# 3. The library's CUDA tests (GPU against the CPU path, bit for bit).
export TD_ONLY_CUDA=1
run equivalence 80 env TD_LONG=1 .gpu/equivalence --test-threads 2
run ops 30 .gpu/ops --test-threads 2
run boundary 30 .gpu/boundary --test-threads 2
run cuda_threads_2p31_row 70 .gpu/cuda_threads --test-threads 1
run varmap 20 .gpu/varmap --test-threads 1
run nm 20 .gpu/nm --test-threads 1
# 4. Sanitizers on a reduced set.
run memcheck_12_cases 35 env TD_CASES=12 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 .gpu/equivalence random_cases --test-threads 1
run racecheck_6_cases 35 env TD_CASES=6 compute-sanitizer --tool racecheck --error-exitcode 3 .gpu/equivalence random_cases --test-threads 1
unset TD_ONLY_CUDA
# 5. The benchmark against copy, and PyTorch's composite.
run gpu_bench 60 .gpu/gpu_bench "$OUT/gpu_bench.csv"
run torch_baseline 60 env PYTHONUNBUFFERED=1 python3 benches/torch_baseline.py "$OUT/torch_baseline.csv"
# 6. The table.
echo; echo "== dev harness: timing (v4 baseline, the library's kernels, copy) =="
sed -n '/== summary/,$p' "$OUT/dev_validate_and_time.log" 2>/dev/null | head -24
echo; echo "== benchmark (the library vs copy and PyTorch, same GPU, same run) =="
[ -s "$OUT/gpu_bench.csv" ] && [ -s "$OUT/torch_baseline.csv" ] \
  && python3 benches/summary.py "$OUT/gpu_bench.csv" "$OUT/torch_baseline.csv" | tee "$OUT/summary.txt"
echo; echo "== checks (total $(( $(date +%s) - T0 )) s) =="
printf '%s\n' "${status[@]}"
