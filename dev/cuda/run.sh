#!/usr/bin/env bash
# Builds and runs the dev/cuda harness on the GPU machine: nvcc and the driver only (no Rust,
# no network). From the repository root:   bash dev/cuda/run.sh      (about 3-6 minutes)
#  1. nvcc -O3 -std=c++17 -lineinfo -arch=sm_90 (registers and spills into $OUT/dev_build.log)
#  2. dev/cuda/td: validation (edge data, >= 1000 random cases, grouped calls, the large shapes
#     against the CPU reference), then timing of v4 and v5 next to a copy
#  3. compute-sanitizer memcheck and racecheck on `td --small` (no timing)
# Without a GPU:   bash dev/cuda/run.sh --emu   (the validation on the CPU emulator, g++ only;
# the same as scripts/emu/dev.sh)
# Logs go to $OUT (or /tmp/td-out); the last lines are the summary table and the checks.
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = --emu ]; then exec bash scripts/emu/dev.sh --emu; fi
OUT=${OUT:-/tmp/td-out}; mkdir -p "$OUT"
B=dev/cuda/td
status=()
t0=$(date +%s)
if ! nvcc -O3 -std=c++17 -lineinfo -arch=sm_90 -Xptxas -v -o $B dev/cuda/targeted_dropout.cu > "$OUT/dev_build.log" 2>&1; then
  tail -30 "$OUT/dev_build.log"; echo "dev/cuda: BUILD FAILED"; exit 1
fi
status+=("$(printf '%-22s %4ss  %s' build $(( $(date +%s) - t0 )) "$(grep -c 'spill stores' "$OUT/dev_build.log") kernels, spilling: $(grep 'spill stores' "$OUT/dev_build.log" | grep -vc ' 0 bytes spill stores')")")
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? e=$(( $(date +%s) - s ))
  status+=("$(printf '%-22s rc=%-3s %4ss  %s' "$name" "$rc" "$e" "$(grep -E 'validation:|ERROR SUMMARY|RACECHECK SUMMARY|validation failures|MISMATCH|Philox' "$OUT/$name.log" | head -4 | tr '\n' ' ' | cut -c1-150)")")
}
step td_validate_time 230 $B
step td_memcheck 90 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 3 $B --small
step td_racecheck 120 compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 3 $B --small
grep -E '^check ' "$OUT/td_validate_time.log" | head -20
grep -E '^MISMATCH|^  case' "$OUT/td_validate_time.log" | head -6
echo; echo "== dev/cuda: timing (CUDA events, median of 30, inputs rotated over >= 256 MB) =="
sed -n '/== summary/,$p' "$OUT/td_validate_time.log" | head -40
echo; echo "== dev/cuda: checks (total $(( $(date +%s) - t0 ))s) =="
printf '%s\n' "${status[@]}"
