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
# (planted faults it must report), the library's kernels launched as the plan (src/plan/) launches them
# against a CPU reference under ASan + UBSan and under TSan (a reduced case set), the large
# shapes, and the dev harness's own validation. A mismatch, an emulator report or a sanitizer
# report fails. Each step prints its time. Measured 2026-12-03 on the 2-core machine shared with
# six other helpers (load average 8-10): 525 s in all, 346 s of CPU (the builds 226 s, plain
# 2000 cases 101 s, ASan 850 cases 58 s, TSan 172 small cases 48 s, large shapes 80 s, the
# rest 15 s); an earlier version (more grouped calls) 377 s at load 4-5. With the pack / unpack
# classes (2026-12-03, load 3-7): 456 s in all, the builds 228 s, plain 86 s, ASan 48 s, TSan
# 34 s, large shapes 49 s (the pack classes about 10% of each driver run). Not measured on an
# idle machine.
# CHECK_ONLY=<regex> runs only the steps whose names match (and the build, of the variants in
# CHECK_BUILD, default all): scripts/emu/planted.sh uses it.
step() {
  local name=$1 t0=$SECONDS rc=0; shift
  if [ -n "${CHECK_ONLY:-}" ] && ! [[ $name =~ $CHECK_ONLY ]] && [[ $name != "emu build"* ]]; then return 0; fi
  "$@" || rc=$?
  if [ $rc != 0 ]; then echo "check: $name: FAILED (exit $rc) after $((SECONDS - t0)) s"; exit $rc; fi
  echo "check: $name: $((SECONDS - t0)) s"
}
# (CHECK_BUILD=none: use the builds there are.)
# shellcheck disable=SC2086
[ "${CHECK_BUILD:-}" = none ] || step "emu build (${CHECK_BUILD:-plain asan tsan dev})" bash scripts/emu/build.sh ${CHECK_BUILD:-all}
step "emu self-tests" target/emu/plain/driver --selftest
emu_asan_selftest() { # a write past dynamic shared memory, one into a static shared red zone: ASan reports
  local n
  for n in 6 15; do
    ! target/emu/asan/driver --selftest-asan $n > target/emu/asan/selftest-$n.log 2>&1 \
      && grep -q 'ERROR: AddressSanitizer' target/emu/asan/selftest-$n.log \
      || { echo "ASan did not report self-test $n" >&2; cat target/emu/asan/selftest-$n.log >&2; return 1; }
  done
}
step "emu ASan self-tests (past dynamic shared memory, static shared red zone)" emu_asan_selftest
emu_hang_selftest() { # a thread that never reaches a barrier: a report and exit 124, not a hang
  local rc=0; timeout 60 target/emu/plain/driver --selftest-hang > target/emu/plain/hang.log 2>&1 || rc=$?
  [ "$rc" = 124 ] && grep -q 'without reaching a barrier' target/emu/plain/hang.log \
    || { echo "the emulator's watchdog did not report a spinning thread (rc $rc)" >&2; cat target/emu/plain/hang.log >&2; return 1; }
}
step "emu watchdog self-test" emu_hang_selftest
emu_tsan_selftest() { # each planted race must be a TSan report, under every schedule
  local n
  for n in 0 1 2 3; do
    ! env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/driver --selftest-tsan $n > target/emu/tsan/selftest-$n.log 2>&1 \
      && grep -q 'ThreadSanitizer: data race' target/emu/tsan/selftest-$n.log \
      || { echo "TSan did not report planted race $n" >&2; cat target/emu/tsan/selftest-$n.log >&2; return 1; }
  done
}
step "emu TSan self-tests (4 planted races)" emu_tsan_selftest
# The random cases: a fresh seed every run (printed first; --seed replays), every fourth
# launch with fibers switching at every memory access, guard regions around every buffer.
step "emu kernels, plain, 2000 cases" target/emu/plain/driver --cases 2000 --min-per-class 50
step "emu kernels, ASan + UBSan, 400 cases, >= 50 per class" target/emu/asan/driver --cases 400 --min-per-class 50
step "emu kernels, TSan, 60 cases, >= 10 per class, small shapes" env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/driver --cases 60 --min-per-class 10 --small
step "emu N:M kernel, ASan + UBSan, 300 cases" target/emu/asan/nm_driver --cases 300
step "emu N:M kernel, TSan, 100 cases" env TSAN_OPTIONS=halt_on_error=1 target/emu/tsan/nm_driver --cases 100
step "emu kernels, large shapes" target/emu/plain/driver --large
step "dev harness on the emulator" target/emu/dev/td --emu
# The library's ops through the emulated kernels, bit for bit against the CPU path, run in
# .ci/run's `cargo test --release --features emulate` (tests/emulated.rs, launch_plan.rs,
# equivalence.rs with TD_CASES, emulated.rs with TD_EMU_CASES).
