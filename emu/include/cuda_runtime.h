/* The part of the CUDA runtime API that dev/cuda/targeted_dropout.cu uses, on the emulator:
 * device memory is host memory (256-byte aligned, exact size, so ASan sees overruns), copies
 * are memcpy, launches (`k<<<...>>>(...)`, rewritten by scripts/emu/build.sh into
 * `::emu::Launcher(...) << [&] { k(...); }`) run on the emulator at once, events read a
 * host clock. The device is an H200 profile (132 SMs, 50 MB L2, 227 KB opt-in shared memory). */
#ifndef TD_EMU_CUDA_RUNTIME_H
#define TD_EMU_CUDA_RUNTIME_H
#include <stddef.h>
#include <stdint.h>
#include <functional>
#include "../cuda_emu.h"

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;
typedef enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
} cudaFuncAttribute;
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
struct cudaDeviceProp {
    char name[256];
    int multiProcessorCount;
    int l2CacheSize;
    size_t sharedMemPerBlockOptin;
    int major, minor;
};

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaMallocBytes(void** p, size_t n);
template <class T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMallocBytes((void**)p, n); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k, cudaStream_t s = 0);
cudaError_t cudaMemset(void* p, int v, size_t n);
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);
template <class F> inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int v) {
    return v >= 0 && v <= 232448 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t emu_occupancy(int* blocks, int block_size, size_t smem);
template <class F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* b, F, int block_size, size_t smem) {
    return emu_occupancy(b, block_size, smem);
}

namespace emu {
/* `k<<<grid, block, smem, stream>>>(args)` becomes `Launcher("k", grid, block, smem, stream)
 * << [&] { k(args); }`: the launch runs at once; a failure is reported and ends the program. */
struct Launcher {
    const char* name;
    dim3 grid, block;
    size_t smem;
    Launcher(const char* n, dim3 g, dim3 b, size_t s = 0, cudaStream_t = 0) : name(n), grid(g), block(b), smem(s) {}
    void operator<<(const std::function<void()>& body) const;
};
}  // namespace emu
#endif
