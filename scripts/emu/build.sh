#!/usr/bin/env bash
# Builds the CUDA emulator's C++ programs (no Rust, no CUDA): the library-kernel driver
# (emu/test/driver.cpp) and the N:M kernel driver (emu/test/nm_driver.cpp) in three variants,
# and the dev harness under the emulator.
#   bash scripts/emu/build.sh [plain|asan|tsan|dev|all]...   (default all) -> target/emu/<variant>/
# Variants: plain (-O2; the kernel sources carry the access hook: GCC's TSan instrumentation
# linked to emu/emu.cpp's own __tsan_* functions, which count traffic and interleave fibers at
# accesses), asan (AddressSanitizer + UndefinedBehaviorSanitizer, every report fatal; GCC
# cannot combine it with the hook), tsan (ThreadSanitizer; the runtime emu/emu.cpp itself is
# not instrumented, it announces its fibers and barriers to TSan), dev
# (dev/cuda/targeted_dropout.cu).
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${CXX:-g++}
BASE="-std=c++17 -O2 -g -pthread -fno-strict-aliasing -ffp-contract=off -Wall -Wno-unknown-pragmas -Iemu -Iemu/include"
# The access hook (emu/emu.cpp, "The memory-access hook"): the kernels' loads and stores as
# calls, without function entry / exit calls.
HOOK="-fsanitize=thread --param tsan-instrument-func-entry-exit=0"
KERN="-include emu/cuda_emu.h -fno-extern-tls-init -Wno-maybe-uninitialized -Wno-unused-variable -Wno-unused-function"

KSRC="k_weight k_unit k_nm k_test"
build() { # variant
  local v=$1 san="" rt_san="" link="" ksan=""
  case $v in
    plain) ksan=$HOOK ;;
    asan) san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"; rt_san=$san; link=$san ;;
    tsan) san="-fsanitize=thread"; rt_san="-DEMU_TSAN"; link="-fsanitize=thread" ;;
  esac
  local o=target/emu/$v
  mkdir -p "$o"
  local pids=()
  $CXX $BASE $rt_san -c emu/emu.cpp -o "$o/emu.o" & pids+=($!)
  $CXX $BASE $san -c emu/dyn_shared.cpp -o "$o/dyn_shared.o" & pids+=($!)
  $CXX $BASE $san -c emu/kernels.cpp -o "$o/kernels.o" & pids+=($!)
  for k in $KSRC; do $CXX $BASE $san $ksan $KERN -c emu/$k.cpp -o "$o/$k.o" & pids+=($!); done
  $CXX $BASE $san $ksan $KERN -x c++ -c emu/test/faulty.cu -x none -o "$o/faulty.o" & pids+=($!)
  $CXX $BASE $san -c emu/test/driver.cpp -o "$o/driver.o" & pids+=($!)
  $CXX $BASE $san -c emu/test/nm_driver.cpp -o "$o/nm_driver.o" & pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
  local ks=kernels,${KSRC// /,},dyn_shared,emu
  eval "$CXX $link -pthread -o \"$o/driver\" \"$o\"/{driver,faulty,$ks}.o"
  eval "$CXX $link -pthread -o \"$o/nm_driver\" \"$o\"/{nm_driver,$ks}.o"
  echo "built $o/driver $o/nm_driver"
}

build_dev() {
  local o=target/emu/dev
  mkdir -p "$o"
  # The harness's launches `k<<<grid, block, smem, stream>>>(args)` become emulator launches;
  # everything else compiles as it is (emu/include/cuda_runtime.h maps the runtime API).
  perl -0pe 's/((?:[\w:]+)(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);/::emu::Launcher("$1", $2) << [&]() { $1($3); };/g' \
    dev/cuda/targeted_dropout.cu > "$o/targeted_dropout_emu.cpp"
  $CXX $BASE -O2 -DTD_EMU_DEV $KERN -Idev/cuda -Ikernels -c "$o/targeted_dropout_emu.cpp" -o "$o/td.o" &
  local p1=$!
  $CXX $BASE -c emu/emu.cpp -o "$o/emu.o" &
  local p2=$!
  $CXX $BASE -c emu/dyn_shared.cpp -o "$o/dyn_shared.o"
  $CXX $BASE -c emu/runtime_api.cpp -o "$o/runtime_api.o"
  wait $p1; wait $p2
  $CXX -pthread -o "$o/td" "$o"/{td,emu,dyn_shared,runtime_api}.o
  echo "built $o/td"
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case $what in
    plain|asan|tsan) build "$what" ;;
    dev) build_dev ;;
    all) build plain; build asan; build tsan; build_dev ;;
    *) echo "usage: $0 [plain|asan|tsan|dev|all]..." >&2; exit 2 ;;
  esac
done
