// The CUDA runtime API of emu/include/cuda_runtime.h (for the dev harness under the emulator).
#include "include/cuda_runtime.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "td_emu.h"

const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        default: return "unspecified launch failure";
    }
}
cudaError_t cudaMallocBytes(void** p, size_t n) {
    *p = nullptr;
    if (posix_memalign(p, 256, n ? n : 1) != 0) return cudaErrorMemoryAllocation;
    return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k, cudaStream_t) {
    return cudaMemcpy(dst, src, n, k);
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "td_emu (CPU emulation, H200 profile)");
    p->multiProcessorCount = 132;
    p->l2CacheSize = 50 << 20;
    p->sharedMemPerBlockOptin = 232448;
    p->major = 9;
    return cudaSuccess;
}
struct CUevent_st {
    std::chrono::steady_clock::time_point t;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->t = std::chrono::steady_clock::now();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
// Blocks of `block_size` threads per multiprocessor: 2048 threads, 228 KB of shared memory
// (1 KB reserved per block), 32 blocks.
cudaError_t emu_occupancy(int* b, int block_size, size_t smem) {
    int by_threads = 2048 / (block_size > 0 ? block_size : 1);
    int by_smem = (int)(233472 / (smem + 1024));
    *b = std::max(0, std::min(32, std::min(by_threads, by_smem)));
    return cudaSuccess;
}

namespace emu {
void Launcher::operator<<(const std::function<void()>& body) const {
    static uint64_t calls = 0;
    const TdEmuSchedule s = schedule_from_env(calls++);
    std::string err;
    if (!launch(name, grid.x, grid.y, grid.z, block.x, block.y, block.z, (unsigned)smem, body, s, &err)) {
        fprintf(stderr, "EMULATOR: %s (schedule: order %u, run-ahead %u, workers %u)\n", err.c_str(),
                s.thread_order, s.warp_runahead, s.block_workers);
        exit(3);
    }
}
}  // namespace emu
