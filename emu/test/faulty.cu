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

extern "C" int td_emu_selftest(int which, char* err, size_t len) {
    unsigned out[256];
    for (auto& o : out) o = 0;
    void (*k[])(unsigned*) = {f_missing_barrier,  f_missing_barrier,     f_divergent_shfl,
                              f_barrier_exited,   f_uninit_static,       f_uninit_dynamic,
                              f_write_past_dynamic, f_lane_outside_mask, f_shfl_exited_lane,
                              f_good_sum};
    TdEmuSchedule s{};
    s.block_workers = 1;
    s.thread_order = which == 1 ? 1 : 0;
    s.seed = 42;
    unsigned* op = out;
    const std::function<void()> body = [&] { k[which](op); };
    std::string msg;
    const unsigned dyn = which == 6 ? 1024 : which == 5 ? 1024 : 0;
    if (!emu::launch("selftest", 1, 1, 1, 256, 1, 1, dyn, body, s, &msg)) {
        snprintf(err, len, "%s", msg.c_str());
        return 1;
    }
    // Results that a correct execution gives.
    for (unsigned i = 0; i < 256; i++) {
        unsigned want = 0;
        switch (which) {
            case 0: case 1: want = 256 - i; break;
            case 4: want = 1; break;
            case 5: want = 0; break;
            case 9: want = 255 * 256 / 2 + 86; break;
            default: want = out[i];
        }
        if (out[i] != want) {
            snprintf(err, len, "wrong result: out[%u] = %u, want %u", i, out[i], want);
            return 1;
        }
    }
    return 0;
}
