// Device helpers shared by the kernels of this crate: Philox4x32-10, element bits and
// magnitude keys, vector loads and masked stores by aligned groups of four, and the
// block-wide scan and histogram pick. Every kernel runs TD_BLOCK (256) threads per block.
#pragma once

#include <stdint.h>
#include "params.h"

// Assumptions of the 8-bit radix kernels, checked where they are made.
static_assert(TD_BLOCK == 256, "one histogram bin per thread: 256 bins of an 8-bit digit, 256 threads (pick_bin, Scratch::hist, the long-row histograms)");
static_assert(TD_BLOCK % 32 == 0, "block_exclusive_scan sums whole warps");
static_assert(TD_ALWAYS == (1 << 24), "the threshold compares against r >> 8, a 24-bit number");

// ---------------------------------------------------------------------------------------
// Philox4x32-10

__device__ __forceinline__ uint4 philox_block(uint64_t g, uint64_t seed, uint64_t offset) {
    uint4 c = make_uint4((uint32_t)g, (uint32_t)(g >> 32), (uint32_t)offset, (uint32_t)(offset >> 32));
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
    for (int i = 0; i < 10; i++) {
        if (i > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

__device__ __forceinline__ uint32_t word_of(uint4 b, int q) {
    return q == 0 ? b.x : q == 1 ? b.y : q == 2 ? b.z : b.w;
}

// ---------------------------------------------------------------------------------------
// Element types as raw bits

template <typename U> struct Bits;
template <> struct Bits<uint16_t> {
    static constexpr uint16_t MASK = 0x7fff;
    static constexpr int BITS = 16;
};
template <> struct Bits<uint32_t> {
    static constexpr uint32_t MASK = 0x7fffffffu;
    static constexpr int BITS = 32;
};
template <> struct Bits<uint64_t> {
    static constexpr uint64_t MASK = 0x7fffffffffffffffull;
    static constexpr int BITS = 64;
};

template <typename U> __device__ __forceinline__ bool aligned4(const void* p) {
    // A group of four: 8 bytes for 16-bit types, 16 bytes otherwise (f64 uses two 16-byte
    // accesses).
    const uintptr_t a = sizeof(U) == 2 ? 8 : 16;
    return ((uintptr_t)p & (a - 1)) == 0;
}

__device__ __forceinline__ void load4(const uint16_t* p, uint16_t (&x)[4]) {
    uint2 t = *reinterpret_cast<const uint2*>(p);
    x[0] = (uint16_t)(t.x & 0xffff); x[1] = (uint16_t)(t.x >> 16);
    x[2] = (uint16_t)(t.y & 0xffff); x[3] = (uint16_t)(t.y >> 16);
}
__device__ __forceinline__ void load4(const uint32_t* p, uint32_t (&x)[4]) {
    uint4 t = *reinterpret_cast<const uint4*>(p);
    x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
}
__device__ __forceinline__ void load4(const uint64_t* p, uint64_t (&x)[4]) {
    ulonglong2 a = reinterpret_cast<const ulonglong2*>(p)[0];
    ulonglong2 b = reinterpret_cast<const ulonglong2*>(p)[1];
    x[0] = a.x; x[1] = a.y; x[2] = b.x; x[3] = b.y;
}
__device__ __forceinline__ void store4(uint16_t* p, const uint16_t (&x)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2((uint32_t)x[0] | ((uint32_t)x[1] << 16), (uint32_t)x[2] | ((uint32_t)x[3] << 16));
}
__device__ __forceinline__ void store4(uint32_t* p, const uint32_t (&x)[4]) {
    *reinterpret_cast<uint4*>(p) = make_uint4(x[0], x[1], x[2], x[3]);
}
__device__ __forceinline__ void store4(uint64_t* p, const uint64_t (&x)[4]) {
    reinterpret_cast<ulonglong2*>(p)[0] = make_ulonglong2(x[0], x[1]);
    reinterpret_cast<ulonglong2*>(p)[1] = make_ulonglong2(x[2], x[3]);
}


// A group of four elements at p (local indices l0 .. l0 + 3 of the caller) into x: one vector
// load when the group is whole (`full`) and aligned, else the elements with in[q] one by one
// (0 for the others).
template <typename U>
__device__ __forceinline__ void load4_masked(const U* p, bool full, const bool (&in)[4], U (&x)[4]) {
    if (full && aligned4<U>(p)) {
        load4(p, x);
    } else {
#pragma unroll
        for (int q = 0; q < 4; q++) x[q] = in[q] ? p[q] : (U)0;
    }
}

// Stores x to the group at p: one vector store when whole and aligned, else the elements with
// in[q] one by one.
template <typename U>
__device__ __forceinline__ void store4_masked(U* p, bool full, const bool (&in)[4], const U (&x)[4]) {
    if (full && aligned4<U>(p)) {
        store4(p, x);
    } else {
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (in[q]) p[q] = x[q];
    }
}

// The u8 flags of a group (1 = dropped), the elements with in[q] only.
__device__ __forceinline__ void store_mask4(uint8_t* p, const bool (&in)[4], const bool (&d)[4]) {
#pragma unroll
    for (int q = 0; q < 4; q++)
        if (in[q]) p[q] = d[q] ? 1 : 0;
}

// The dropped flags of a group of four with draw indices 4 g .. 4 g + 3 whose targeted flags
// are tg: all targeted at TD_ALWAYS, none at 0, else one Philox block for the group (only when
// one of them is targeted).
__device__ __forceinline__ void drop4(const bool (&tg)[4], uint64_t g, const TdDraws& d, bool (&dr)[4]) {
    if (d.threshold == (uint32_t)TD_ALWAYS) {
#pragma unroll
        for (int q = 0; q < 4; q++) dr[q] = tg[q];
    } else if (d.threshold != 0 && (tg[0] || tg[1] || tg[2] || tg[3])) {
        const uint4 b = philox_block(g, d.seed, d.offset);
#pragma unroll
        for (int q = 0; q < 4; q++) dr[q] = tg[q] && (word_of(b, q) >> 8) < d.threshold;
    } else {
#pragma unroll
        for (int q = 0; q < 4; q++) dr[q] = false;
    }
}

// ---------------------------------------------------------------------------------------
// Block-wide building blocks (blockDim.x == TD_BLOCK == 256)

struct Scratch {
    unsigned hist[256];
    unsigned warp_tot[TD_BLOCK / 32];
    unsigned pick[3];
    unsigned long long key;
};

// Exclusive scan of one value per thread; `total` gets the block's sum. All threads call.
__device__ __forceinline__ unsigned block_exclusive_scan(unsigned v, Scratch& sc, unsigned* total) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    unsigned x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sc.warp_tot[wid] = x;
    __syncthreads();
    unsigned base = 0, tot = 0;
#pragma unroll
    for (int i = 0; i < TD_BLOCK / 32; i++) {
        unsigned t = sc.warp_tot[i];
        base += i < wid ? t : 0;
        tot += t;
    }
    __syncthreads();
    *total = tot;
    return base + x - v;
}

struct Pick {
    unsigned bin, r, cnt;
};

// The bin of a 256-bin histogram that holds rank r (0-based), the rank within it and its
// size. All threads call; the histogram must be complete (after a barrier).
__device__ __forceinline__ Pick pick_bin(const unsigned* hist, unsigned r, Scratch& sc) {
    unsigned h = hist[threadIdx.x];
    unsigned tot;
    unsigned ex = block_exclusive_scan(h, sc, &tot);
    if (r >= ex && r - ex < h) {
        sc.pick[0] = threadIdx.x;
        sc.pick[1] = r - ex;
        sc.pick[2] = h;
    }
    __syncthreads();
    Pick p = {sc.pick[0], sc.pick[1], sc.pick[2]};
    __syncthreads();
    return p;
}

// Adds one to hist[digit] when `active`: one shared-memory atomic per active lane (a warp-wide
// __match_any_sync aggregation was measured slower, benches/NOTES.md v2).
__device__ __forceinline__ void hist_add(unsigned* hist, unsigned digit, bool active) {
    if (active) atomicAdd(&hist[digit], 1u);
}
