// Driver machinery shared by the emulator's drivers (emu/test/driver.cpp, nm_driver.cpp): the
// run's seed, case quotas per class (dtype x path, ...), guarded buffers, the self-test flags.
// Header-only; include after td_emu.h.
//
// - Seed: `--seed S` replays a run; without it every run draws a fresh seed (time and pid)
//   and prints it first, so that CI's runs differ and a failure names its replay command.
// - Quota: after the run's N random cases, more are drawn (only those of classes still
//   short) until every class has its minimum, so that no dtype x path (or other class, e.g.
//   grouped calls) is left with a handful.
// - GuardedBuf: a device buffer with guard regions before and after it. Under ASan the guards
//   are poisoned (any kernel read or write there is an ASan report); otherwise the guards are
//   registered with the emulator (td_emu_guard_add: a kernel access there is an emulator
//   report naming kernel, block and thread, in builds with the access hook) and hold a
//   canary that check() compares (a write there is reported even without the hook). A driver
//   allocates each tensor of a grouped launch and each scratch buffer as its own GuardedBuf,
//   so that an over-read at an interior boundary lands in a guard.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "../td_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define HARNESS_ASAN 1
#endif

namespace harness {

// A fresh seed per run, or the one of `--seed S` (parsed by the driver).
inline uint64_t fresh_seed() {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Prints the seed line every driver begins with (the replay command of a failure).
inline void print_seed(const char* prog, uint64_t seed, bool given) {
    printf("%s: seed 0x%llx (%s; replay: %s --seed 0x%llx ...)\n", prog, (unsigned long long)seed,
           given ? "from --seed" : "fresh this run", prog, (unsigned long long)seed);
    fflush(stdout);
}

// At least `min` cases per class: wanted() says whether a case of class c should run.
struct Quota {
    std::vector<int> count;
    int min;
    Quota(int classes, int min_per_class) : count(classes, 0), min(min_per_class) {}
    bool met() const {
        for (int c : count)
            if (c < min) return false;
        return true;
    }
    // During the first `cases` draws every case runs; after them only cases of short classes.
    bool wanted(int cls, int drawn, int cases) const { return drawn < cases || count[cls] < min; }
    void add(int cls) { count[cls]++; }
    // "name count" per class, and the classes short of the minimum (none once met()).
    std::string report(const std::vector<std::string>& names) const {
        std::string s;
        for (size_t i = 0; i < count.size(); i++) {
            if (!s.empty()) s += ", ";
            s += names[i] + " " + std::to_string(count[i]);
        }
        return s;
    }
};

// A buffer of `bytes` with `kGuard` bytes of guard on each side (see the file comment).
struct GuardedBuf {
    static constexpr size_t kGuard = 256;
    static constexpr unsigned char kCanary = 0xA7;
    unsigned char* raw = nullptr;
    size_t bytes = 0, skew = 0;
    GuardedBuf() = default;
    GuardedBuf(const GuardedBuf&) = delete;
    GuardedBuf& operator=(const GuardedBuf&) = delete;
    // `skew`: the data starts skew bytes past a 256-byte boundary (misaligned tensors).
    explicit GuardedBuf(size_t n, size_t skew_ = 0, int fill = 0) { alloc(n, skew_, fill); }
    void alloc(size_t n, size_t skew_ = 0, int fill = 0) {
        release();
        bytes = n;
        skew = skew_;
        raw = (unsigned char*)aligned_alloc(256, (2 * kGuard + n + skew + 255) / 256 * 256);
        memset(raw, kCanary, 2 * kGuard + n + skew);
        memset(data(), fill, n);
#ifdef HARNESS_ASAN
        __asan_poison_memory_region(raw, kGuard + skew);
        __asan_poison_memory_region(data() + n, kGuard);
#else
        td_emu_guard_add(raw, kGuard + skew);
        td_emu_guard_add(data() + n, kGuard);
#endif
    }
    unsigned char* data() const { return raw + kGuard + skew; }
    template <class T> T* as() const { return (T*)data(); }
    // Whether the guards still hold their canary (a kernel wrote past or before the buffer);
    // prints where when not.
    bool check(const char* what) const {
        if (!raw) return true;
#ifdef HARNESS_ASAN
        return true;  // ASan reported any access
#else
        for (size_t i = 0; i < kGuard + skew; i++)
            if (raw[i] != kCanary) {
                fprintf(stderr, "GUARD: %s: byte %zu before the buffer was written\n", what, kGuard + skew - i);
                return false;
            }
        for (size_t i = 0; i < kGuard; i++)
            if (data()[bytes + i] != kCanary) {
                fprintf(stderr, "GUARD: %s: byte %zu past the end of the buffer (%zu bytes) was written\n", what, i,
                        bytes);
                return false;
            }
        return true;
#endif
    }
    void release() {
        if (!raw) return;
#ifdef HARNESS_ASAN
        __asan_unpoison_memory_region(raw, 2 * kGuard + bytes + skew);
#else
        td_emu_guard_remove(raw);
        td_emu_guard_remove(data() + bytes);
#endif
        free(raw);
        raw = nullptr;
    }
    ~GuardedBuf() { release(); }
};

}  // namespace harness

// The emulator's self-tests (emu/test/faulty.cu).
extern "C" int td_emu_selftest(int which, char* err, size_t len);
extern "C" int td_emu_selftest_count();
extern "C" const char* td_emu_selftest_name(int which);
extern "C" int td_emu_selftest_expect_fail(int which);
extern "C" int td_emu_selftest_runs(int which);
extern "C" int td_emu_selftest_hang();
extern "C" int td_emu_selftest_tsan(int which);

namespace harness {

// Handles the self-test flags of every driver; returns -1 when argv has none, else the
// process's exit code.
//   --selftest         kernels with planted faults (faulty.cu) must be reported
//   --selftest-hang    must end with a report and exit code 124 (the watchdog)
//   --selftest-asan N  (ASan build) self-test N must end with an ASan report
//   --selftest-tsan N  (TSan build) planted race N must end with a TSan report
inline int selftest_main(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--selftest")) {
            int bad = 0, n = td_emu_selftest_count();
            for (int t = 0; t < n; t++) {
                const bool expect_fail = td_emu_selftest_expect_fail(t);
                if (!td_emu_selftest_runs(t)) {
                    printf("selftest %-60s skipped (needs the access hook: the plain build)\n",
                           td_emu_selftest_name(t));
                    continue;
                }
#if defined(__SANITIZE_ADDRESS__)
                // Under ASan a write past the end is an ASan report that ends the process
                // (`--selftest-asan 6` runs it alone).
                if (t == 6) continue;
#endif
                char err[1024] = "";
                const int r = td_emu_selftest(t, err, sizeof err);
                const bool ok = expect_fail ? r != 0 : r == 0;
                printf("selftest %-60s %s%s%s\n", td_emu_selftest_name(t), ok ? "ok" : "FAILED", err[0] ? ": " : "",
                       err);
                bad += !ok;
            }
            printf("selftest: %d failed\n", bad);
            return bad ? 1 : 0;
        }
        if (!strcmp(argv[i], "--selftest-hang")) {
            td_emu_selftest_hang();
            printf("a thread spinning without a barrier was not reported\n");
            return 0;  // check.sh wants exit code 124
        }
        if (!strcmp(argv[i], "--selftest-asan")) {
            const int t = i + 1 < argc ? atoi(argv[i + 1]) : 6;
            char err[1024] = "";
            const int r = td_emu_selftest(t, err, sizeof err);
            printf("%s: not caught by ASan (%d: %s)\n", td_emu_selftest_name(t), r, err);
            return 0;  // check.sh wants an ASan report
        }
        if (!strcmp(argv[i], "--selftest-tsan")) {
            const int t = i + 1 < argc ? atoi(argv[i + 1]) : 0;
            const int r = td_emu_selftest_tsan(t);
            printf("planted race %d: not reported by TSan (%d)\n", t, r);
            return 0;  // check.sh wants a TSan report
        }
    }
    return -1;
}

}  // namespace harness
