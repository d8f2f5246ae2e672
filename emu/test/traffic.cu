// Kernels that test the emulator itself, with a known global-memory traffic (tests/
// emulated_traffic.rs and `driver --selftest`): a copy (every element read once and written
// once, each warp's accesses in four whole 32-byte sectors of 4-byte elements), a strided
// read (each lane in its own sector past a stride of 8 elements), the copy with 16-byte
// vector accesses, and a shared-memory histogram (plain `+=` when `racy`, else atomicAdd).
// Compiled like the crate's kernels (force-included emu/cuda_emu.h); named emu_test_*.

// out[i] = in[i] for i < n, grid-stride.
extern "C" __global__ void emu_test_copy_u32(const unsigned* in, unsigned* out, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = in[i];
}

// out[i] = in[i * stride] for i < n, grid-stride.
extern "C" __global__ void emu_test_strided_u32(const unsigned* in, unsigned* out, unsigned long long n,
                                                unsigned stride) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = in[i * stride];
}

// out4[i] = in4[i] for i < n4 (16 bytes a lane), grid-stride.
extern "C" __global__ void emu_test_copy_u32x4(const uint4* in, uint4* out, unsigned long long n4) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n4;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = in[i];
}

// hist[b] += the count of in[i] & 255 == b over the block's elements (one block: hist is the
// block's shared histogram copied out).
extern "C" __global__ void emu_test_shared_hist(const unsigned* in, unsigned* hist, unsigned long long n,
                                                unsigned racy) {
    __shared__ unsigned h[256];
    for (unsigned i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
    __syncthreads();
    for (unsigned long long i = threadIdx.x; i < n; i += blockDim.x) {
        unsigned* p = &h[in[i] & 255];
        if (racy) *p += 1;
        else atomicAdd(p, 1u);
    }
    __syncthreads();
    for (unsigned i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = h[i];
}
