#!/usr/bin/env bash
# Runs on the GPU machine (copied to .gpu/run.sh by scripts/gpu-check.sh), one profile per
# call so that each fits in a device call of at most 8 minutes:
#   check  the libraries resolve; the GPU-vs-CPU equivalence suite, the ops and VarMapDropout
#          tests, 8 host threads and a 2^31-element row (issue 9), compute-sanitizer memcheck
#          and racecheck over a subset (the default build: v4 kernels)
#   check5 the same with the build of feature kernels-v5 (v5 where it applies, issue 16)
#   dev    the dev/cuda harness: the v5 kernels against the CPU reference and v4, timed side by
#          side, the grouped call and the bit-mask backward, memcheck and racecheck (issue 11)
#   bench  the GPU benchmark, the PyTorch baseline, ncu, and the MNIST main job's CNN on the GPU
# Each ends with a summary. Logs go to $OUT (or /tmp/td-out).
set -u
profile=${1:-check}
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/td-out}; mkdir -p "$OUT"
for f in .gpu/*.gz; do gunzip -f "$f"; done
chmod +x .gpu/equivalence* .gpu/ops* .gpu/cuda_threads* .gpu/varmap* .gpu/nm* .gpu/gpu_bench* .gpu/mnist_prune .gpu/find-runtime-libs.sh
export LD_LIBRARY_PATH=$(.gpu/find-runtime-libs.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
status=()
for b in equivalence ops cuda_threads varmap nm gpu_bench mnist_prune equivalence_v5 ops_v5 cuda_threads_v5 varmap_v5 nm_v5 gpu_bench_v5; do
  if ldd .gpu/$b | grep 'not found'; then status+=("ldd $b: MISSING LIBRARIES"); else status+=("ldd $b: ok"); fi
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
run() { # name timeout command...
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? e=$(( $(date +%s) - s ))
  tail -4 "$OUT/$name.log"
  status+=("$(printf '%-34s rc=%-3s %4ss  %s' "$name" "$rc" "$e" "$(grep -E 'test result|ERROR SUMMARY|RACECHECK SUMMARY|bit-exact' "$OUT/$name.log" | tr '\n' ' ' | cut -c1-110)")")
}
if [ "$profile" = dev ]; then
  OUT="$OUT" bash dev/cuda/run.sh
  exit $?
fi
export TD_ONLY_CUDA=1
if [ "$profile" = check ] || [ "$profile" = check5 ]; then
v=""; [ "$profile" = check5 ] && v=_v5
run equivalence$v"_1000_cases" 150 env TD_LONG=1 .gpu/equivalence$v --nocapture --test-threads 2
run ops_per_behaviour$v 60 .gpu/ops$v --test-threads 2
# 8 host threads on one device (row lengths and dtypes of every kernel), and a bf16 row of
# 2^31 + 4099 elements pruned exactly (issue 9).
run cuda_threads_and_long_row$v 120 .gpu/cuda_threads$v --test-threads 1
run memcheck_40_cases$v 80 env TD_CASES=40 compute-sanitizer --tool memcheck --leak-check no .gpu/equivalence$v random_cases --test-threads 1
run racecheck_12_cases$v 80 env TD_CASES=12 compute-sanitizer --tool racecheck .gpu/equivalence$v random_cases --test-threads 1
run varmap_on_cuda$v 60 .gpu/varmap$v --test-threads 1
# N:M (kernels/nm.cu): the hand-computed and random cases against the oracle, and memcheck.
run nm_on_cuda$v 60 .gpu/nm$v --test-threads 1
run memcheck_nm$v 80 compute-sanitizer --tool memcheck --leak-check no .gpu/nm$v random_against_the_oracle --test-threads 1
echo; echo "== checks =="
printf '%s\n' "${status[@]}"
exit 0
fi
unset TD_ONLY_CUDA
# The MNIST main job's CNN on the GPU, as many epochs as fit (the README's GPU row).
run mnist_cnn_cuda 150 .gpu/mnist_prune --model cnn --device cuda --epochs 5 --data-dir data/mnist-5k --out "$OUT/mnist_cnn"
run gpu_bench 100 .gpu/gpu_bench "$OUT/gpu_bench.csv"
run gpu_bench_v5 100 .gpu/gpu_bench_v5 "$OUT/gpu_bench_v5.csv"
# Kernel durations and DRAM throughput per kernel (ncu reads the counters on Firecracker).
timeout 90 ncu --clock-control none --section SpeedOfLight --kernel-name regex:'tdw|unit_|tdnm' .gpu/gpu_bench --profile > "$OUT/ncu.log" 2>&1
awk '/tdw_|unit_|tdnm_/ && /\(/ {name=$1; grid=$2} /Duration/ {d=$NF; u=$(NF-1)} /DRAM Throughput/ {t=$NF} /Duration/ {print name, grid, "duration", d, u, "dram%", t}' "$OUT/ncu.log" > "$OUT/ncu_summary.txt"
status+=("ncu: $(wc -l < "$OUT/ncu_summary.txt") kernels profiled")
run torch_baseline 100 env PYTHONUNBUFFERED=1 python3 benches/torch_baseline.py "$OUT/torch_baseline.csv"
cat "$OUT/gpu_bench.log" | grep -E "copy ceiling|fails" | head -12
grep -E "copy ceiling" "$OUT/torch_baseline.log"
echo; echo "== benchmark (crate vs PyTorch, same GPU, same run) =="
python3 benches/summary.py "$OUT/gpu_bench.csv" "$OUT/torch_baseline.csv" | tee "$OUT/summary.txt"
echo; echo "== benchmark, build with kernels-v5 (same GPU, same run) =="
python3 benches/summary.py "$OUT/gpu_bench_v5.csv" "$OUT/torch_baseline.csv" | tee "$OUT/summary_v5.txt"
echo; echo "== ncu (kernel, grid, duration, DRAM throughput %) =="
cat "$OUT/ncu_summary.txt" | head -60
echo; echo "== checks =="
printf '%s\n' "${status[@]}"
