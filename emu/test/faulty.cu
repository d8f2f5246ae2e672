// Kernels with planted faults: the emulator must report each (or its result must be wrong),
// and the well-formed one must pass. Compiled like the crate's kernels (force-included
// emu/cuda_emu.h); run by `driver --selftest`.
#include "../td_emu.h"

extern __shared__ __align__(16) unsigned char smem_raw[];

__global__ void f_missing_barrier(unsigned* out) {
    __shared__ unsigned s[256];
    s[threadIdx.x] = threadIdx.x + 1;
    // (a __syncthreads belongs here)
    out[threadIdx.x] = s[255 - threadIdx.x];
}
__global__ void f_divergent_shfl(unsigned* out) {
    const unsigned lane = threadIdx.x & 31;
    unsigned v;
    if (lane < 16) v = __shfl_sync(0xffffffffu, lane, 0);
    else v = __shfl_sync(0xffffffffu, lane, 1);
    out[threadIdx.x] = v;
}
__global__ void f_barrier_exited(unsigned* out) {
    if (threadIdx.x >= 128) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void f_uninit_static(unsigned* out) {
    __shared__ unsigned h[256];
    atomicAdd(&h[threadIdx.x], 1u);  // (h is never zeroed)
    __syncthreads();
    out[threadIdx.x] = h[threadIdx.x];
}
__global__ void f_uninit_dynamic(unsigned* out) {
    const unsigned* d = reinterpret_cast<const unsigned*>(smem_raw);
    out[threadIdx.x] = d[threadIdx.x];  // never written
}
__global__ void f_write_past_dynamic(unsigned* out) {
    unsigned* d = reinterpret_cast<unsigned*>(smem_raw);
    d[threadIdx.x + 1] = 1;  // 1 KB of dynamic shared memory: thread 255 writes past it
    __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void f_lane_outside_mask(unsigned* out) {
    out[threadIdx.x] = __shfl_sync(0x1u, threadIdx.x, 0);
}
__global__ void f_shfl_exited_lane(unsigned* out) {
    if ((threadIdx.x & 31) == 5) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, threadIdx.x, 0);
}
__global__ void f_good_sum(unsigned* out) {
    __shared__ unsigned warp_sum[8];
    unsigned v = threadIdx.x;
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = v;
    __syncthreads();
    unsigned t = 0;
    for (int i = 0; i < 8; i++) t += warp_sum[i];
    const unsigned n = __syncthreads_count(threadIdx.x % 3 == 0);
    const unsigned b = __ballot_sync(0xffffffffu, threadIdx.x & 1);
    out[threadIdx.x] = t + n + (b == 0xaaaaaaaau ? 0 : 1000000);
}

// A shared histogram updated with a plain `+=` (atomicAdd belongs there): each thread's
// read-modify-write runs uninterrupted between barriers unless the fibers switch at memory
// accesses (TD_EMU_INTERLEAVE), which tears it as a GPU may.
__global__ void f_racy_shared_hist(unsigned* out) {
    __shared__ unsigned h[16];
    if (threadIdx.x < 16) h[threadIdx.x] = 0;
    __syncthreads();
    h[threadIdx.x & 15] += 1;
    __syncthreads();
    out[threadIdx.x] = h[threadIdx.x & 15];
}
// The same with atomicAdd: correct under every schedule.
__global__ void f_atomic_shared_hist(unsigned* out) {
    __shared__ unsigned h[16];
    if (threadIdx.x < 16) h[threadIdx.x] = 0;
    __syncthreads();
    atomicAdd(&h[threadIdx.x & 15], 1u);
    __syncthreads();
    out[threadIdx.x] = h[threadIdx.x & 15];
}
// A warp sum over 16 lanes instead of 32 (the offsets start at 8): a logic bug no sanitizer
// sees; the result is wrong.
__global__ void f_half_warp_sum(unsigned* out) {
    unsigned v = threadIdx.x;
    for (int o = 8; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

// An over-read of one element past the buffer (out[256..] is a guard region here).
__global__ void f_read_past_buffer(unsigned* out) {
    const unsigned v = out[threadIdx.x + 1];
    __syncthreads();
    out[threadIdx.x] = v;
}

// A static shared array one element short (255 where 256 belong), filled through a pointer:
// thread 255 writes into the red zone after it.
__global__ void f_static_shared_short(unsigned* out) {
    __shared__ unsigned h[255];
    unsigned* p = h;
    asm volatile("" : "+r"(p));  // a pointer the compiler cannot trace back to h (UBSan's object size)
    p[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = p[255 - threadIdx.x];
}

// Races for ThreadSanitizer (`driver --selftest-tsan N`, each must be a TSan report).
// 0: a missing barrier after the first two: thread t writes s[t] and reads s[t + 1] with no
// barrier between, then all meet at a later barrier (which, with one sync address for all
// barrier generations, ordered the late fibers after the early ones' racy accesses).
__global__ void t_missing_later_barrier(unsigned* out) {
    __shared__ unsigned s[256];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    const unsigned v = s[255 - threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = v + 1;
    // (a __syncthreads belongs here)
    const unsigned r = s[(threadIdx.x + 1) & 255];
    __syncthreads();
    out[threadIdx.x] = r;
}
// 1: a non-atomic update of a global counter by every block (atomicAdd belongs there).
__global__ void t_global_plain_add(unsigned* out) {
    if (threadIdx.x == 0) out[0] += 1;
}
// 2: a missing __syncwarp between two phases of a warp after its first __syncwarp.
__global__ void t_missing_later_syncwarp(unsigned* out) {
    __shared__ unsigned s[256];
    s[threadIdx.x] = threadIdx.x;
    __syncwarp();
    const unsigned v = s[threadIdx.x ^ 1];
    __syncwarp();
    s[threadIdx.x] = v + 1;
    // (a __syncwarp belongs here)
    const unsigned r = s[threadIdx.x ^ 1];
    __syncwarp();
    out[threadIdx.x] = r;
}
// 3: lanes that exchange values through a shuffle but the data through shared memory: a
// shuffle orders nothing beyond its values.
__global__ void t_shuffle_is_no_barrier(unsigned* out) {
    __shared__ unsigned s[256];
    s[threadIdx.x] = threadIdx.x;
    const unsigned got = __shfl_xor_sync(0xffffffffu, threadIdx.x, 1);
    out[threadIdx.x] = s[threadIdx.x ^ 1] + got;
}

// Thread 0 waits for a flag that thread 255 sets, with no barrier between: a hang on a GPU
// (or not), a report and exit(124) on the emulator (threads switch only at sync points).
__global__ void f_spin(unsigned* out) {
    __shared__ volatile unsigned flag;
    if (threadIdx.x == 0) {
        flag = 0;
        while (flag == 0) {
        }
    }
    if (threadIdx.x == 255) flag = 1;
    out[threadIdx.x] = 1;
}

extern "C" int td_emu_selftest_hang() {
    unsigned out[256];
    TdEmuSchedule s{};
    s.block_workers = 1;
    s.barrier_timeout_ms = 500;
    unsigned* op = out;
    const std::function<void()> body = [&] { f_spin(op); };
    std::string msg;
    emu::launch("selftest_hang", 1, 1, 1, 256, 1, 1, 0, body, s, &msg);
    return 0;
}

// Runs race `which` (above) under every schedule: under TSan the first run ends the process
// with a report (halt_on_error=1); returns 1 if none was seen.
extern "C" int td_emu_selftest_tsan(int which) {
    void (*k[])(unsigned*) = {t_missing_later_barrier, t_global_plain_add, t_missing_later_syncwarp,
                              t_shuffle_is_no_barrier};
    if (which < 0 || which >= (int)(sizeof k / sizeof k[0])) return 2;
    static unsigned out[256];
    // TD_EMU_SELFTEST_SCHEDULE=k runs only schedule k (0..5: order k / 2, run-ahead k % 2).
    const char* only = getenv("TD_EMU_SELFTEST_SCHEDULE");
    for (int order = 0; order < 3; order++)
        for (int ra = 0; ra < 2; ra++) {
            if (only && atoi(only) != order * 2 + ra) continue;
            TdEmuSchedule s{};
            s.block_workers = 2;
            s.thread_order = (uint32_t)order;
            s.warp_runahead = (uint32_t)ra;
            s.seed = 42 + (uint64_t)order;
            unsigned* op = out;
            const std::function<void()> body = [&] { k[which](op); };
            std::string msg;
            const unsigned grid = which == 1 ? 8 : 1;
            if (!emu::launch("selftest_tsan", grid, 1, 1, 256, 1, 1, 0, body, s, &msg)) {
                fprintf(stderr, "selftest_tsan %d: %s\n", which, msg.c_str());
                return 1;
            }
        }
    return 1;
}

struct SelfTest {
    const char* what;
    void (*k)(unsigned*);
    bool expect_fail;  // reported, or a wrong result
    unsigned dyn;
    uint32_t order, flags;
    unsigned (*want)(unsigned i);  // null: any result
    bool guard;                    // out[256..512) is a guard region (td_emu_guard_add)
};

extern "C" int td_emu_selftest(int which, char* err, size_t len);

static const SelfTest kSelfTests[] = {
    {"missing barrier (forward order)", f_missing_barrier, true, 0, 0, 0, [](unsigned i) { return 256 - i; }},
    {"missing barrier (reverse order)", f_missing_barrier, true, 0, 1, 0, [](unsigned i) { return 256 - i; }},
    {"divergent shuffle", f_divergent_shfl, true, 0, 0, 0, nullptr},
    {"barrier skipped by exited threads", f_barrier_exited, true, 0, 0, 0, nullptr},
    {"uninitialised static shared memory", f_uninit_static, true, 0, 0, 0, [](unsigned) { return 1u; }},
    {"uninitialised dynamic shared memory", f_uninit_dynamic, true, 1024, 0, 0, [](unsigned) { return 0u; }},
    {"write past the end of dynamic shared memory", f_write_past_dynamic, true, 1024, 0, 0, nullptr},
    {"lane outside its own mask", f_lane_outside_mask, true, 0, 0, 0, nullptr},
    {"shuffle with a lane that exited", f_shfl_exited_lane, true, 0, 0, 0, nullptr},
    {"well-formed kernel", f_good_sum, false, 0, 0, 0, [](unsigned) { return 255u * 256 / 2 + 86; }},
    {"plain += on a shared histogram, interleaved", f_racy_shared_hist, true, 0, 0, TD_EMU_INTERLEAVE,
     [](unsigned) { return 16u; }},
    {"plain += on a shared histogram, interleaved (random order)", f_racy_shared_hist, true, 0, 2,
     TD_EMU_INTERLEAVE, [](unsigned) { return 16u; }},
    {"atomicAdd on a shared histogram, interleaved", f_atomic_shared_hist, false, 0, 2, TD_EMU_INTERLEAVE,
     [](unsigned) { return 16u; }},
    {"half-warp reduction", f_half_warp_sum, true, 0, 0, 0,
     [](unsigned i) { return (i & ~31u) * 32 + 31 * 32 / 2; }},
    {"over-read into a guard region past the buffer", f_read_past_buffer, true, 0, 0, 0, nullptr, true},
    {"static shared array one element short, through a pointer", f_static_shared_short, true, 0, 0, 0, nullptr,
     true},
};

extern "C" int td_emu_access_hook(void);
// Whether self-test `which` can run in this build: the interleaving needs the access hook
// (kernel code compiled with -fsanitize=thread, the emulator's runtime answering it).
extern "C" int td_emu_selftest_runs(int which) {
#if defined(__SANITIZE_THREAD__)
    const bool hook = td_emu_access_hook();
#else
    const bool hook = false;
#endif
    return !((kSelfTests[which].flags & TD_EMU_INTERLEAVE) || kSelfTests[which].guard) || hook;
}

extern "C" int td_emu_selftest_count() { return (int)(sizeof kSelfTests / sizeof kSelfTests[0]); }
extern "C" const char* td_emu_selftest_name(int which) { return kSelfTests[which].what; }
extern "C" int td_emu_selftest_expect_fail(int which) { return kSelfTests[which].expect_fail; }

// Runs self-test `which`: 0 when the kernel ran and gave the result a correct execution
// gives, 1 with the report or the first wrong element in err.
extern "C" int td_emu_selftest(int which, char* err, size_t len) {
    const SelfTest& t = kSelfTests[which];
    unsigned out[512];
    for (auto& o : out) o = 0;
    if (t.guard) td_emu_guard_add(out + 256, 256 * sizeof(unsigned));
    TdEmuSchedule s{};
    s.block_workers = 1;
    s.thread_order = t.order;
    s.flags = t.flags;
    s.seed = 42;
    unsigned* op = out;
    void (*k)(unsigned*) = t.k;
    const std::function<void()> body = [&] { k(op); };
    std::string msg;
    const bool launched = emu::launch("selftest", 1, 1, 1, 256, 1, 1, t.dyn, body, s, &msg);
    if (t.guard) td_emu_guard_remove(out + 256);
    if (!launched) {
        snprintf(err, len, "%s", msg.c_str());
        return 1;
    }
    for (unsigned i = 0; t.want && i < 256; i++) {
        if (out[i] != t.want(i)) {
            snprintf(err, len, "wrong result: out[%u] = %u, want %u", i, out[i], t.want(i));
            return 1;
        }
    }
    return 0;
}
