#!/usr/bin/env bash
# Builds, strips and gzips what the GPU machine needs into .gpu/ (git-ignored) and prints
# the command to run there. Needs the CUDA toolchain of shared/cuda/setup.sh:
#   scripts/cuda/setup.sh ~/.cache/cuda13 && source ~/.cache/cuda13/env.sh
# On the GPU machine (no Rust there), from the repository root: bash .gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: source the env.sh of shared/cuda/setup.sh" >&2; exit 1; }
cargo build --release --features cuda --example gpu_bench --example mnist_prune
bins=$(cargo test --release --features cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("equivalence", "ops", "cuda_threads", "varmap", "nm"):
        print(m["target"]["name"], m["executable"])')
rm -rf .gpu && mkdir -p .gpu
while read -r name path; do
  strip -o ".gpu/$name" "$path"
done <<< "$bins"
strip -o .gpu/gpu_bench target/release/examples/gpu_bench
strip -o .gpu/mnist_prune target/release/examples/mnist_prune
gzip -f .gpu/equivalence .gpu/ops .gpu/cuda_threads .gpu/varmap .gpu/nm .gpu/gpu_bench .gpu/mnist_prune
libs=scripts/cuda/find-runtime-libs.sh
cp "$libs" .gpu/
cp scripts/gpu-run.sh .gpu/run.sh
du -sh .gpu
echo "on the GPU machine, from the repository root (carry .gpu), one profile per call:"
echo "  bash .gpu/run.sh check   # correctness of the library's kernels (~6 min)"
echo "  bash .gpu/run.sh dev     # the dev/cuda harness: v5 vs v4, grouped call, backward (~3-6 min)"
echo "  bash .gpu/run.sh bench   # benchmark, PyTorch baseline, MNIST CNN on the GPU (~7 min)"
