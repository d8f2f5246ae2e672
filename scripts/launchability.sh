#!/usr/bin/env bash
# Static launchability of the CUDA kernels (no GPU): for every kernel of the launch plan and
# every SASS target of the fatbins, the resources that `cuobjdump --dump-resource-usage`
# reports are checked against the plan's worst case on that architecture:
#   - registers x threads per block within the 64K-register file (registers allocated per
#     warp in units of 256, as the hardware does);
#   - static + the most dynamic shared memory the plan asks of the kernel within the
#     architecture's opt-in per-block limit (sm_80: 163 KB, sm_86 / sm_89: 99 KB, sm_90:
#     227 KB), so that no supported GPU falls back or fails to launch;
#   - no local memory (spills, stack) on sm_90, for every kernel (no exception).
# The plan's worst case is `plan::tests::worst_case_launch` (src/plan/tests.rs): one
# `launch KERNEL THREADS SMEM` line per kernel. Since issue 22 (one kernel generation) the
# plan no longer depends on a kernel's registers or static shared memory (it chooses block
# sizes and grids from the row length and the SM count only), so there is no emulator
# profile to compare with the fatbin: the check is the fatbin's resources against the plan's
# threads and dynamic shared memory.
# Prints every kernel x target (registers, shared memory, local memory, stack); a failure
# names the kernel, the target and the numbers.
#   usage: scripts/launchability.sh [FATBIN_DIR]   (default: compile kernels/*.cu with nvcc,
#   with build.rs's default targets, into a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  pids=()
  for cu in kernels/*.cu; do
    nvcc --fatbin -O3 -std=c++17 -Ikernels \
      -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_86,code=sm_86 \
      -gencode=arch=compute_89,code=sm_89 -gencode=arch=compute_90,code=sm_90 \
      -gencode=arch=compute_90,code=compute_90 \
      -o "$dir/$(basename "$cu" .cu).fatbin" "$cu" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi
usage=$(for f in "$dir"/*.fatbin; do cuobjdump --dump-resource-usage "$f"; done)
plan=$(cargo test -q --release --lib plan::tests::worst_case_launch -- --ignored --nocapture 2>/dev/null \
  | grep -E '^launch ')
[ -n "$plan" ] || { echo "launchability: the plan printed no worst case" >&2; exit 1; }
USAGE="$usage" PLAN="$plan" python3 - <<'PY'
import os, re, sys
optin = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}
res, arch = {}, None
for line in os.environ["USAGE"].splitlines():
    m = re.match(r"\s*arch = (sm_\d+)", line)
    if m:
        arch = m.group(1)
        continue
    m = re.match(r"\s*Function (\w+):", line)
    if m:
        fn = m.group(1)
        continue
    if "REG:" in line and arch:
        f = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
        res[(arch, fn)] = {k: int(v) for k, v in f.items()}
launch = {}
for line in os.environ["PLAN"].splitlines():
    p = line.split()
    launch[p[1]] = (int(p[2]), int(p[3]))
fails, checked = [], 0
# A kernel of the fatbin that the plan never launches (a leftover of an old generation).
for (a, k) in sorted(res):
    if a in optin and k not in launch:
        fails.append(f"{k} on {a}: in the fatbin but not in the plan's kernels")
for a in sorted(optin):
    for k, (threads, dyn) in sorted(launch.items()):
        r = res.get((a, k))
        if r is None:
            fails.append(f"{k} on {a}: not in the fatbin")
            continue
        checked += 1
        regs, static, local, stack = r["REG"], r["SHARED"], r["LOCAL"], r["STACK"]
        per_warp = -(-regs * 32 // 256) * 256
        per_block = per_warp * -(-threads // 32)
        if per_block > 65536:
            fails.append(f"{k} on {a}: {regs} registers x {threads} threads = {per_block} "
                         f"allocated registers per block, over the 65536 of the register file")
        if static + dyn > optin[a]:
            fails.append(f"{k} on {a}: {static} bytes of static + {dyn} of dynamic shared memory "
                         f"(the plan's most) = {static + dyn}, over the {optin[a]}-byte opt-in limit")
        if a == "sm_90" and (local or stack):
            fails.append(f"{k} on {a}: {local} bytes of local memory and a {stack}-byte stack "
                         f"per thread (spills)")
        print(f"{a} {k}: {regs} regs x {threads} = {per_block}/65536, shared {static}+{dyn}"
              f"/{optin[a]}, local {local}, stack {stack}")
if fails:
    print("launchability: FAILED", file=sys.stderr)
    for f in fails:
        print("  " + f, file=sys.stderr)
    sys.exit(1)
print(f"launchability: {checked} kernel x target pairs ({len(launch)} kernels x {len(optin)} "
      f"targets) launch within their limits; no local memory on sm_90")
PY
