// Device helpers shared by the kernels of this crate: Philox4x32-10, element bits and
// magnitude keys, vector loads and masked stores by aligned groups of four.
#pragma once

#include <stdint.h>
#include "params.h"

static_assert(TD_BLOCK % 32 == 0, "whole warps");
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
