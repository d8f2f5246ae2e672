#!/usr/bin/env bash
# Packs everything one GPU run needs into .gpu/ (git-ignored), xz-compressed, at most 60 MiB,
# and prints the one command to run there. Needs the CUDA toolchain of scripts/cuda/setup.sh:
#   scripts/cuda/setup.sh ~/.cache/cuda13 && source ~/.cache/cuda13/env.sh
# On the GPU machine (no Rust there; nvcc for the dev harness), from the repository root:
#   bash .gpu/run.sh all      (within 9 minutes on an H200; the table is the last output)
# The pack: the library's CUDA test binaries (tests/equivalence.rs, ops.rs, boundary.rs,
# cuda_threads.rs with the 2^31-element row, varmap.rs, nm.rs), the benchmark
# (examples/gpu_bench.rs), built with the default features plus `cuda` (one kernel
# generation, kernels/*.cu, since issue 22), stripped; the runtime-library finder; run.sh.
# The dev harness (dev/cuda, the v4 baseline dev/cuda/weight_v4.cu vs the library's kernels
# vs copy) is built on the GPU machine by nvcc from the tree.
#   scripts/gpu-check.sh [--emu]   --emu: rehearse what runs without a GPU (the dev harness's
#                                  validation on the emulator, the pack's layout and size from
#                                  the emulated test binaries), no nvcc needed
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((60 * 1024 * 1024))
emu=0; [ "${1:-}" = --emu ] && emu=1
feats=cuda
[ $emu = 1 ] && feats=emulate
# The test binaries of the pack (run.sh runs each by this name): every one a tests/<name>.rs.
tests="equivalence ops boundary cuda_threads varmap nm"
for t in $tests; do
  [ -f "tests/$t.rs" ] || { echo "gpu-check: tests/$t.rs does not exist (update the pack's list)" >&2; exit 1; }
done
if [ $emu = 0 ]; then
  command -v nvcc >/dev/null || { echo "nvcc not found: source the env.sh of scripts/cuda/setup.sh" >&2; exit 1; }
fi
rm -rf .gpu && mkdir -p .gpu
# The test binaries, stripped into .gpu/ by name.
cargo test --release --features "$feats" --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in sys.argv[1:]:
        print(m["target"]["name"], m["executable"])' $tests \
  | while read -r name path; do strip -o ".gpu/$name" "$path"; done
for t in $tests; do
  [ -f ".gpu/$t" ] || { echo "gpu-check: the test binary $t was not built" >&2; exit 1; }
done
bins="$tests"
if [ $emu = 0 ]; then
  cargo build --release --features "$feats" --example gpu_bench
  strip -o .gpu/gpu_bench target/release/examples/gpu_bench
  bins="$bins gpu_bench"
else
  # gpu_bench requires the `cuda` feature (Cargo.toml): not in the emulated rehearsal's pack,
  # whose size is that much smaller than the real one.
  echo "rehearsal: gpu_bench left out (it needs --features cuda)"
fi
cp scripts/cuda/find-runtime-libs.sh .gpu/
cp scripts/gpu-run.sh .gpu/run.sh
for t in $bins; do xz -T2 -6 -f ".gpu/$t"; done
bytes=$(du -cb .gpu | tail -1 | cut -f1)
echo "pack: .gpu/, $bytes bytes ($((bytes / 1024 / 1024)) MiB of the $((LIMIT / 1024 / 1024)) MiB limit), features $feats"
ls -l .gpu
[ "$bytes" -le "$LIMIT" ] || { echo "gpu-check: the pack is over 60 MiB" >&2; exit 1; }
if [ $emu = 1 ]; then
  echo "rehearsal: the dev harness's validation on the emulator"
  bash dev/cuda/run.sh --emu
  exit 0
fi
echo "on the GPU machine, from the repository root (carry .gpu):"
echo "  bash .gpu/run.sh all    # dev harness, tests, sanitizers, benchmark vs copy and PyTorch, table last (<= 9 min)"
