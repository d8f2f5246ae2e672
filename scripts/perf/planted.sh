#!/usr/bin/env bash
# The budget check's own test: plant a regression in a scratch copy of kernels/ and require
# that scripts/perf/model.py fails on it, naming the kernel, the figure and the budget.
#   philox: dropped_of (kernels/weight.cu) draws a Philox block for every element instead of
#           one per group of four (the same bytes: the SASS instructions per element catch it)
#   reread: td_block's output pass (kernels/weight.cu, "4. Targeting, draws, output") reads
#           each whole vector of the row from global memory again instead of the registers
#           that hold it (a second read of the row: the emulator's counted bytes catch it; the
#           scratch copy of the crate is built and run under the emulator, a few minutes)
# usage: scripts/perf/planted.sh [philox|reread] (after scripts/perf-model.sh, whose
# target/perf/traffic.txt philox reuses)
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nvdisasm >/dev/null && [ -f "${CUDA_DIR:-$HOME/.cache/cuda13}/env.sh" ]; then
  # shellcheck disable=SC1091
  source "${CUDA_DIR:-$HOME/.cache/cuda13}/env.sh"
fi
what=${1:-philox}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$what" in
  philox)
    cp -r kernels "$tmp/kernels"
    python3 - "$tmp/kernels/weight.cu" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = "const uint4 b = philox_rk(g0 + h, offset, keys);"
new = ("const uint4 b0 = philox_rk(g0 + h, offset, keys), b1 = philox_rk(g0 + h, offset ^ 1, keys), "
       "b2 = philox_rk(g0 + h, offset ^ 2, keys), b3 = philox_rk(g0 + h, offset ^ 3, keys); "
       "const uint4 b = make_uint4(b0.x, b1.y, b2.z, b3.w);")
assert s.count(old) == 1, "the plant's line is not in weight.cu: update scripts/perf/planted.sh"
open(p, "w").write(s.replace(old, new))
PY
    traffic=target/perf/traffic.txt ;;
  reread)
    git archive HEAD | tar -x -C "$tmp"
    python3 - "$tmp/kernels/weight.cu" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = """        if (out) {
            uint4 y = x[v];
            if (sg.vals) {"""
new = """        if (out) {
            uint4 y = valid[v] == FULL ? __ldcs(wv + vi) : x[v];
            if (sg.vals) {"""
assert s.count(old) == 1, "the plant's lines are not in weight.cu: update scripts/perf/planted.sh"
open(p, "w").write(s.replace(old, new))
PY
    traffic=$tmp/traffic.txt
    # The scratch crate shares the target dir (its dependencies are built there): under
    # another package and example name, so that none of its artifacts (the build script's
    # emulated kernels, the example binary) replaces the tree's.
    sed -i 's/^name = "candle-targeted-dropout"/name = "td-planted-copy"/' "$tmp/Cargo.toml"
    mv "$tmp/examples/perf_traffic.rs" "$tmp/examples/perf_traffic_planted.rs"
    (cd "$tmp" && CARGO_TARGET_DIR="$OLDPWD/target" cargo run -q --release --features emulate \
       --example perf_traffic_planted weight_dropout prune > "$traffic") ;;
  *) echo "usage: $0 [philox|reread]" >&2; exit 2 ;;
esac
[ -f "$traffic" ] || { echo "planted: run scripts/perf-model.sh first ($traffic)" >&2; exit 2; }
set +e
[ -d "$tmp/kernels" ] || cp -r kernels "$tmp/kernels"
out=$(python3 scripts/perf/model.py --kernels-root "$tmp" --traffic "$traffic" --check 2>&1)
rc=$?
set -e
grep '^budget' <<< "$out" || true
if [ "$rc" -eq 1 ] && grep -q '^budget: .* over its budget' <<< "$out"; then
  echo "planted ($what): the budget check fails, as it must"
else
  echo "planted ($what): the budget check did NOT fail (rc $rc)" >&2
  exit 1
fi
