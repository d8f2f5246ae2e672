#!/usr/bin/env bash
# Builds, strips and gzips what the GPU machine needs into .gpu/ (git-ignored) and prints
# the command to run there. Needs the CUDA toolchain of shared/cuda/setup.sh:
#   scripts/cuda/setup.sh ~/.cache/cuda13 && source ~/.cache/cuda13/env.sh
# On the GPU machine (no Rust there), from the repository root: bash .gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: source the env.sh of shared/cuda/setup.sh" >&2; exit 1; }
# The test binaries of one feature set, stripped into .gpu/ with a suffix.
tests_into_gpu() { # features suffix
  cargo test --release --features "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("equivalence", "ops", "cuda_threads", "varmap", "nm"):
        print(m["target"]["name"], m["executable"])' \
    | while read -r name path; do strip -o ".gpu/$name$2" "$path"; done
}
rm -rf .gpu && mkdir -p .gpu
# v4 (the library's default) and v5 (feature kernels-v5): the same tests and benchmark on both.
cargo build --release --features cuda --example gpu_bench --example mnist_prune
tests_into_gpu cuda ""
strip -o .gpu/gpu_bench target/release/examples/gpu_bench
strip -o .gpu/mnist_prune target/release/examples/mnist_prune
cargo build --release --features cuda,kernels-v5 --example gpu_bench
tests_into_gpu cuda,kernels-v5 _v5
strip -o .gpu/gpu_bench_v5 target/release/examples/gpu_bench
gzip -f .gpu/equivalence* .gpu/ops* .gpu/cuda_threads* .gpu/varmap* .gpu/nm* .gpu/gpu_bench* .gpu/mnist_prune
libs=scripts/cuda/find-runtime-libs.sh
cp "$libs" .gpu/
cp scripts/gpu-run.sh .gpu/run.sh
du -sh .gpu
echo "on the GPU machine, from the repository root (carry .gpu), one profile per call, in this order:"
echo "  bash .gpu/run.sh dev     # dev/cuda harness: v4 vs v5 vs copy bit-exact + timed, grouped ResNet-32, backward, memcheck, racecheck (~4-6 min)"
echo "  bash .gpu/run.sh check5  # the library with kernels-v5: equivalence, ops, 8 threads + 2^31 row, memcheck, racecheck (~6 min)"
echo "  bash .gpu/run.sh check   # the same with the default (v4) kernels (~6 min)"
echo "  bash .gpu/run.sh bench   # benchmark v4 and v5 builds, PyTorch baseline, MNIST CNN on the GPU (~8 min)"
