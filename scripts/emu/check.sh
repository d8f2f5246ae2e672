#!/usr/bin/env bash
# Every emulator check CI runs, in one place (.ci/run calls it): the emulator's builds and
# self-tests (planted faults it must report), the library's kernels against a CPU reference
# under ASan + UBSan and under TSan, the large shapes, the dev harness's own validation, and
# the library's ops through the emulated kernels. Each step prints a line with its time
# (`check: <step>: <s> s`); any mismatch, emulator report or sanitizer report exits non-zero.
#   bash scripts/emu/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# The CUDA kernels on the CPU emulator (emu/, issue 14), C++ only: the emulator's self-tests
# (planted faults it must report), the library's kernels launched as src/cuda.rs launches them
# against a CPU reference under ASan + UBSan and under TSan (a reduced case set), the large
# shapes, and the dev harness's own validation. A mismatch, an emulator report or a sanitizer
# report fails. Each step prints its time (about 5 minutes in all on 2 cores).
step() { local name=$1 t0=$SECONDS; shift; "$@"; echo "check: $name: $((SECONDS - t0)) s"; }
step "emu build (plain, asan, tsan, dev)" bash scripts/emu/build.sh all
step "emu self-tests" target/emu/plain/driver --selftest
emu_asan_selftest() { # a write past dynamic shared memory must be an ASan report
  ! target/emu/asan/driver --selftest-asan > target/emu/asan/selftest.log 2>&1 \
    && grep -q 'AddressSanitizer: use-after-poison' target/emu/asan/selftest.log \
    || { echo "ASan did not report the write past dynamic shared memory" >&2; return 1; }
}
step "emu ASan self-test" emu_asan_selftest
emu_hang_selftest() { # a thread that never reaches a barrier: a report and exit 124, not a hang
  local rc=0; timeout 60 target/emu/plain/driver --selftest-hang > target/emu/plain/hang.log 2>&1 || rc=$?
  [ "$rc" = 124 ] && grep -q 'without reaching a barrier' target/emu/plain/hang.log \
    || { echo "the emulator's watchdog did not report a spinning thread (rc $rc)" >&2; cat target/emu/plain/hang.log >&2; return 1; }
}
step "emu watchdog self-test" emu_hang_selftest
step "emu kernels, ASan + UBSan, 400 cases" target/emu/asan/driver --cases 400
step "emu kernels, TSan, 60 cases" env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/driver --cases 60
step "emu N:M kernel, ASan + UBSan, 300 cases" target/emu/asan/nm_driver --cases 300
step "emu N:M kernel, TSan, 100 cases" env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/nm_driver --cases 100
step "emu kernels, large shapes" target/emu/plain/driver --large
step "dev harness on the emulator" target/emu/dev/td --emu
# The v5 kernels (kernels/weight_v5.cu, issue 16): their driver against its own reference
# under ASan + UBSan and TSan, and the library's ops with the kernels-v5 feature through the
# emulator, bit for bit against the oracle (v5 is not the default until a GPU run; this keeps
# it correct meanwhile).
step "v5 kernels, ASan + UBSan, 40 cases" target/emu/asan/v5_driver --cases 40
step "v5 kernels, TSan, 20 cases" env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/v5_driver --cases 20
step "library with kernels-v5 on the emulator" env TD_CASES=200 \
  cargo test --release --features emulate,kernels-v5 --test emulated_kernels --test equivalence --test emulated_long_v5

