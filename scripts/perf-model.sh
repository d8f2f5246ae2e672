#!/usr/bin/env bash
# The kernels' speed without a GPU (issue 23): the performance model calibrated on H200 run 4
# and the CI budgets of every kernel path.
#   1. nvcc (PyPI wheels) compiles the kernels to sm_90 and sm_80 cubins; the SASS gives the
#      instructions per element of each path's main loop (scripts/perf/sass.py, the table
#      scripts/perf/paths.toml); cuobjdump the registers and shared memory (occupancy).
#   2. The emulator runs each benchmarked op (examples/perf_traffic.rs, feature `emulate`) on
#      the H200's launch plan: the kernels launched, their grids and the global-memory bytes
#      it counted.
#   3. scripts/perf/model.py prints a `calibration` line for every shape run 4 measured (v4 as
#      run 4 built it, from git) and a `predict` line for every op and shape of the library,
#      then checks benches/budgets.toml: more bytes than a budget, or instructions per element
#      grown by more than 10%, fails with the kernel, the figure and the budget.
# usage: scripts/perf-model.sh [--update-budgets "reason"]   (any other argument: to model.py)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
CUDA_DIR=${CUDA_DIR:-$HOME/.cache/cuda13}
if ! command -v nvdisasm >/dev/null; then
  if [ ! -f "$CUDA_DIR/env.sh" ]; then
    # setup.sh also builds link stand-ins (which need `cargo fetch`); the model needs only
    # nvcc, nvdisasm and cuobjdump, which its first step installs.
    flock /tmp/cuda13.lock scripts/cuda/setup.sh "$CUDA_DIR" >/dev/null 2>&1 || true
  fi
  if [ -f "$CUDA_DIR/env.sh" ]; then
    # shellcheck disable=SC1091
    source "$CUDA_DIR/env.sh"
  else
    export PATH="$CUDA_DIR/nvidia/cu13/bin:$PATH"
  fi
fi
command -v nvdisasm >/dev/null || { echo "perf-model: no nvdisasm (scripts/cuda/setup.sh $CUDA_DIR)" >&2; exit 1; }
mkdir -p target/perf
args=(--check)
[ "${1:-}" = "--update-budgets" ] && { args=(--update-budgets "${2:?a reason for the new budgets}"); shift 2; }
# The SASS of every source and target, in parallel with the emulator's build and run.
python3 scripts/perf/model.py --prebuild &
prebuild=$!
cargo run -q --release --features emulate --example perf_traffic > target/perf/traffic.txt 2> target/perf/traffic.log \
  || { cat target/perf/traffic.log >&2; echo "perf-model: the emulated ops failed" >&2; exit 1; }
wait "$prebuild"
echo "perf-model: emulated $(grep -c '^launch ' target/perf/traffic.txt) launches ($(grep -c 's$' target/perf/traffic.log) op x dtype cases)"
python3 scripts/perf/model.py --traffic target/perf/traffic.txt "${args[@]}" "$@"
echo "perf-model: $((SECONDS - start)) s"
