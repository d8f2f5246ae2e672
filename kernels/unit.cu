// Targeted unit dropout on the GPU: the unit scores, and the output once the units are
// chosen. The choice itself is the weight selection (weight.cu) over the scores as one row
// (draw index = unit index), writing a bit per unit. Launch parameters in params.h.
//
// unit_scores_* compute the squared L2 norm per unit in the documented order with no fused
// multiply-add; unit_apply writes the output, skipping the reads of dropped units.

#include <cuda_fp16.h>
#include "common.cuh"

// ---------------------------------------------------------------------------------------
// Unit scores: the squared L2 norm of each of `units` rows of n elements, in the order of
// `cpu::unit_score`: lane j (0 <= j < TD_UNIT_LANES = 1024) sums x[j + 1024 m]^2 over m in
// turn from +0.0, then lanes fold pairwise, lane[j] += lane[j + s] for s = 512 .. 1; NaN
// becomes canonical.
// Every product and sum is rounded on its own (__fmul_rn / __fadd_rn: no contraction).

__device__ __forceinline__ float to_acc_f32(uint32_t b) { return __uint_as_float(b); }
__device__ __forceinline__ float to_acc_f16(uint16_t b) { return __half2float(__ushort_as_half(b)); }
__device__ __forceinline__ float to_acc_bf16(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }
__device__ __forceinline__ double to_acc_f64(uint64_t b) { return __longlong_as_double((long long)b); }

__device__ __forceinline__ float acc_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float acc_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double acc_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double acc_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float canonical(float a) { return isnan(a) ? __uint_as_float(0x7fc00000u) : a; }
__device__ __forceinline__ double canonical(double a) {
    return isnan(a) ? __longlong_as_double(0x7ff8000000000000ll) : a;
}

// One block per unit (n > 32). scores: [units].
template <typename U, typename A, A (*CONV)(U)>
__device__ void unit_scores_block(const U* __restrict__ w, A* scores, const UnitScoresParams& p) {
    static_assert(TD_UNIT_LANES == 4 * TD_BLOCK, "four lanes per thread");
    __shared__ A lanes[TD_UNIT_LANES];
    const uint64_t units = p.units, n = p.n;
    // Rounds of TD_UNIT_LANES elements per unit (n < 2^42 on any GPU: the count fits 32 bits).
    const uint32_t rounds = (uint32_t)((n + TD_UNIT_LANES - 1) / TD_UNIT_LANES);
    for (uint64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const U* x = w + u * n;
        A acc[4] = {0, 0, 0, 0};
        // Four rounds of m at a time: 16 loads in flight, then the sums in order.
        for (uint32_t m0 = 0; m0 < rounds; m0 += 4) {  // hot-loop: scores, 16
            A v[4][4];
#pragma unroll
            for (int mm = 0; mm < 4; mm++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint64_t i = (uint64_t)(m0 + mm) * TD_UNIT_LANES + threadIdx.x + (uint64_t)TD_BLOCK * q;
                    v[mm][q] = i < n ? CONV(x[i]) : (A)0;
                }
#pragma unroll
            for (int mm = 0; mm < 4; mm++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint64_t i = (uint64_t)(m0 + mm) * TD_UNIT_LANES + threadIdx.x + (uint64_t)TD_BLOCK * q;
                    if (i < n) acc[q] = acc_add(acc[q], acc_mul(v[mm][q], v[mm][q]));
                }
        }
#pragma unroll
        for (int q = 0; q < 4; q++) lanes[threadIdx.x + TD_BLOCK * q] = acc[q];
        __syncthreads();
        for (int s = TD_UNIT_LANES / 2; s >= 1; s >>= 1) {
            for (int j = threadIdx.x; j < s; j += TD_BLOCK) lanes[j] = acc_add(lanes[j], lanes[j + s]);
            __syncthreads();
        }
        if (threadIdx.x == 0) scores[u] = canonical(lanes[0]);
        __syncthreads();
    }
}

template <int S, typename A> __device__ __forceinline__ void fold(A (&l)[32]) {
#pragma unroll
    for (int j = 0; j < S; j++) l[j] = acc_add(l[j], l[j + S]);
}

// One thread per unit (n <= 32): the folds with s >= n add +0.0 and change nothing.
template <typename U, typename A, A (*CONV)(U)>
__device__ void unit_scores_tiny(const U* __restrict__ w, A* scores, const UnitScoresParams& p) {
    const uint64_t units = p.units;
    const uint32_t n = (uint32_t)p.n;  // at most TD_TINY_ROW
    for (uint64_t u = (uint64_t)blockIdx.x * TD_BLOCK + threadIdx.x; u < units;
         u += (uint64_t)gridDim.x * TD_BLOCK) {
        const U* x = w + u * n;
        A l[32];
#pragma unroll
        for (int j = 0; j < 32; j++) {
            A v = j < (int)n ? CONV(x[j]) : (A)0;
            l[j] = acc_add((A)0, acc_mul(v, v));
        }
        fold<16>(l);
        fold<8>(l);
        fold<4>(l);
        fold<2>(l);
        fold<1>(l);
        scores[u] = canonical(l[0]);
    }
}

// out[e] = bit e / n of ubits ? +0 : vals[e]; mask[e] = that bit. Either output may be null.
template <typename U>
__device__ void unit_apply(const U* vals, U* out, uint8_t* mask, const uint32_t* ubits,
                           const UnitApplyParams& p) {
    const uint64_t numel = p.numel, n = p.n;
    const uint64_t groups = (numel + 3) / 4;
    for (uint64_t g = (uint64_t)blockIdx.x * TD_BLOCK + threadIdx.x; g < groups;
         g += (uint64_t)gridDim.x * TD_BLOCK) {  // hot-loop: unit apply, 4
        const uint64_t e = 4 * g;
        uint64_t u = numel < (1ull << 32) ? (uint64_t)((uint32_t)e / (uint32_t)n) : e / n;
        uint64_t end = (u + 1) * n;
        bool d[4], in[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            in[q] = e + q < numel;
            while (in[q] && e + q >= end) {
                u++;
                end += n;
            }
            d[q] = in[q] && ((ubits[u >> 5] >> (u & 31)) & 1u);
        }
        const bool full = in[3];
        if (out) {
            U vb[4] = {0, 0, 0, 0};
            if (full && !(d[0] && d[1] && d[2] && d[3]) && aligned4<U>(vals + e)) {
                load4(vals + e, vb);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++)
                    if (in[q] && !d[q]) vb[q] = vals[e + q];
            }
#pragma unroll
            for (int q = 0; q < 4; q++) vb[q] = d[q] ? (U)0 : vb[q];
            store4_masked(out + e, full, in, vb);
        }
        if (mask) store_mask4(mask + e, in, d);
    }
}

// ---------------------------------------------------------------------------------------
// extern "C" entry points: device buffers first, then the launch parameters by value.

#define SCORE_KERNELS(NAME, U, A)                                                               \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) td_unit_scores_block_##NAME(              \
        const U* w, A* scores, const UnitScoresParams p) {                                      \
        unit_scores_block<U, A, to_acc_##NAME>(w, scores, p);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) td_unit_scores_tiny_##NAME(               \
        const U* w, A* scores, const UnitScoresParams p) {                                      \
        unit_scores_tiny<U, A, to_acc_##NAME>(w, scores, p);                                    \
    }

SCORE_KERNELS(f32, uint32_t, float)
SCORE_KERNELS(f16, uint16_t, float)
SCORE_KERNELS(bf16, uint16_t, float)
SCORE_KERNELS(f64, uint64_t, double)

#define APPLY_KERNEL(NAME, U)                                                                   \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) td_unit_apply_##NAME(                     \
        const U* vals, U* out, uint8_t* mask, const uint32_t* ubits, const UnitApplyParams p) { \
        unit_apply<U>(vals, out, mask, ubits, p);                                               \
    }

APPLY_KERNEL(u16, uint16_t)
APPLY_KERNEL(u32, uint32_t)
APPLY_KERNEL(u64, uint64_t)
