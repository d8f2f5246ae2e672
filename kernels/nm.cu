// N:M targeted dropout (DESIGN.md, "N:M targeted dropout"): one pass, one thread per group.
//
// A weight is [outer, c, s] with c the group axis: group g is slab q = g / s (the m * s
// contiguous elements of one (o, c0)) at position x = g % s, its element j at flat index
// q * m * s + j * s + x. Consecutive threads take consecutive groups, so their loads are
// contiguous: a group of s = 1 is m consecutive elements (vector loads and stores by four
// when aligned), a conv group's elements are s apart and neighbouring threads read
// neighbouring x. Each thread reads its m elements once (and the gradient's, in the backward
// pass), ranks them in registers by comparisons ((key, j) order: ties toward the lower flat
// index), draws Philox only for the blocks that hold a targeted element, and writes each
// element once.
//
// MAXM (4, 8, 16 or 32, the host picks the smallest >= m) sizes the register arrays; every
// loop over it is unrolled, so the arrays stay in registers.
#include "common.cuh"

template <typename U, int MAXM>
__device__ __forceinline__ void nm_group(const U* __restrict__ w, const U* __restrict__ vals,
                                         U* __restrict__ out, uint8_t* __restrict__ mask,
                                         const TdNmParams& p, uint64_t g) {
    const unsigned m = p.m;
    const uint64_t s = p.s;
    const uint64_t q = g / s;
    const uint64_t x = g - q * s;
    const uint64_t base = q * m * s + x;
    // Vector loads and stores by four: s = 1, m a multiple of 4 (so base is too) and every
    // buffer aligned for a group of four (a view may start anywhere).
    const bool vec = s == 1 && (m & 3u) == 0 && aligned4<U>(w + base) &&
                     (!vals || aligned4<U>(vals + base)) && (!out || aligned4<U>(out + base));
    // The values to mask (the gradient, in the backward pass) are held in registers next to
    // the weight's group, except for groups of up to 32 u64: there they are read where they
    // are written, once each (holding both, 2 x 32 u64, spilled 80 bytes on sm_90).
    constexpr bool HOLD = sizeof(U) * MAXM < 256;
    U b[MAXM];
    U v[MAXM];
#pragma unroll
    for (int j = 0; j < MAXM; j++) b[j] = v[j] = 0;
#pragma unroll
    for (int j = 0; j < MAXM; j += 4) {
        if ((unsigned)j < m) {
            if (vec) {
                U t[4];
                load4(w + base + j, t);
#pragma unroll
                for (int q4 = 0; q4 < 4; q4++) b[j + q4] = t[q4];
                if (HOLD && vals) {
                    load4(vals + base + j, t);
#pragma unroll
                    for (int q4 = 0; q4 < 4; q4++) v[j + q4] = t[q4];
                }
            } else {
#pragma unroll
                for (int q4 = 0; q4 < 4; q4++) {
                    if ((unsigned)(j + q4) < m) {
                        const uint64_t e = base + (uint64_t)(j + q4) * s;
                        b[j + q4] = w[e];
                        if (HOLD && vals) v[j + q4] = vals[e];
                    }
                }
            }
        }
    }
    // Ranks by comparison: element j is targeted when fewer than m - n elements of its group
    // order before it.
    bool dr[MAXM];
#pragma unroll
    for (int j = 0; j < MAXM; j++) {
        unsigned r = 0;
        const U kj = b[j] & Bits<U>::MASK;
#pragma unroll
        for (int i = 0; i < MAXM; i++) {
            if (i != j && (unsigned)i < m) {
                const U ki = b[i] & Bits<U>::MASK;
                r += i < j ? (ki <= kj) : (ki < kj);
            }
        }
        dr[j] = (unsigned)j < m && r < p.targeted;
    }
    const uint32_t th = p.draws.threshold;
    if (th == 0) {
#pragma unroll
        for (int j = 0; j < MAXM; j++) dr[j] = false;
    } else if (th != (uint32_t)TD_ALWAYS) {
        if (s == 1) {
            // The group's elements are contiguous: one block per four draw indices, drawn when
            // one of its elements is targeted.
            const uint64_t c0 = base >> 2, c1 = (base + m - 1) >> 2;
#pragma unroll
            for (int cb = 0; cb <= MAXM / 4; cb++) {
                const uint64_t c = c0 + cb;
                if (c > c1) continue;
                bool any = false;
#pragma unroll
                for (int j = 0; j < MAXM; j++)
                    if ((base + j) >> 2 == c) any |= dr[j];
                if (!any) continue;
                const uint4 blk = philox_block(c, p.draws.seed, p.draws.offset);
#pragma unroll
                for (int j = 0; j < MAXM; j++) {
                    const uint64_t e = base + j;
                    if (e >> 2 == c && dr[j]) dr[j] = (word_of(blk, (int)(e & 3)) >> 8) < th;
                }
            }
        } else {
            // Elements s apart: a block per targeted element (s >= 4 puts each in its own).
#pragma unroll
            for (int j = 0; j < MAXM; j++) {
                if (dr[j]) {
                    const uint64_t e = base + (uint64_t)j * s;
                    const uint4 blk = philox_block(e >> 2, p.draws.seed, p.draws.offset);
                    dr[j] = (word_of(blk, (int)(e & 3)) >> 8) < th;
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < MAXM; j += 4) {
        if ((unsigned)j < m) {
            if (vec) {
                if (out) {
                    U t[4];
                    if (HOLD && vals) {
#pragma unroll
                        for (int q4 = 0; q4 < 4; q4++) t[q4] = v[j + q4];
                    } else if (vals) {
                        load4(vals + base + j, t);
                    } else {
#pragma unroll
                        for (int q4 = 0; q4 < 4; q4++) t[q4] = b[j + q4];
                    }
#pragma unroll
                    for (int q4 = 0; q4 < 4; q4++) t[q4] = dr[j + q4] ? (U)0 : t[q4];
                    store4(out + base + j, t);
                }
                if (mask) {
#pragma unroll
                    for (int q4 = 0; q4 < 4; q4++) mask[base + j + q4] = dr[j + q4] ? 1 : 0;
                }
            } else {
#pragma unroll
                for (int q4 = 0; q4 < 4; q4++) {
                    if ((unsigned)(j + q4) < m) {
                        const uint64_t e = base + (uint64_t)(j + q4) * s;
                        if (out) out[e] = dr[j + q4] ? (U)0 : (vals ? (HOLD ? v[j + q4] : vals[e]) : b[j + q4]);
                        if (mask) mask[e] = dr[j + q4] ? 1 : 0;
                    }
                }
            }
        }
    }
}

// Grid-stride over the groups.
template <typename U, int MAXM>
__device__ __forceinline__ void nm_kernel(const U* __restrict__ w, const U* __restrict__ vals,
                                          U* __restrict__ out, uint8_t* __restrict__ mask,
                                          const TdNmParams& p) {
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < p.groups; g += stride)
        nm_group<U, MAXM>(w, vals, out, mask, p, g);
}

#define NM_KERNEL(NAME, U, MAXM)                                                              \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK)                                       \
        td_nm_##NAME##_m##MAXM(const U* __restrict__ w, const U* __restrict__ vals,           \
                              U* __restrict__ out, uint8_t* __restrict__ mask, TdNmParams p) { \
        nm_kernel<U, MAXM>(w, vals, out, mask, p);                                            \
    }

#define NM_KERNELS(NAME, U) \
    NM_KERNEL(NAME, U, 4)   \
    NM_KERNEL(NAME, U, 8)   \
    NM_KERNEL(NAME, U, 16)  \
    NM_KERNEL(NAME, U, 32)

NM_KERNELS(u16, uint16_t)
NM_KERNELS(u32, uint32_t)
NM_KERNELS(u64, uint64_t)
