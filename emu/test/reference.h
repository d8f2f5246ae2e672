// The one C++ reference of the crate's random numbers and keys, written from DESIGN.md and
// sharing nothing with the kernels: splitmix64 (the drivers' case generator), Philox4x32-10 with
// its known-answer vector, the draw of a flat element index, the drop test, and the selection
// key of a raw element. Included by emu/test/driver.cpp and nm_driver.cpp;
// dev/cuda/targeted_dropout.cu keeps its own copy (the harness stands alone for nvcc).
#pragma once
#include <stdint.h>
#include <string.h>

namespace ref {

// splitmix64: the next value of the generator whose state is s.
inline uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Philox4x32-10 of counter c under key (k0, k1), in place.
inline void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; round++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n1 = (uint32_t)p1;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1, n3 = (uint32_t)p0;
        c[0] = n0;
        c[1] = n1;
        c[2] = n2;
        c[3] = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// The Random123 known-answer vector of Philox4x32-10 (the pi digits).
inline bool philox_kat() {
    uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    philox(c, 0xa4093822, 0x299f31d0);
    return c[0] == 0xd16cfe09 && c[1] == 0x94fdcceb && c[2] == 0x5001e420 && c[3] == 0x24126ea1;
}

// The draw of flat element index e: word e % 4 of Philox4x32-10 at counter
// [e / 4 (64 bits), offset (64 bits)] under the key seed.
inline uint32_t draw(uint64_t e, uint64_t seed, uint64_t offset) {
    const uint64_t g = e / 4;
    uint32_t c[4] = {(uint32_t)g, (uint32_t)(g >> 32), (uint32_t)offset, (uint32_t)(offset >> 32)};
    philox(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    return c[e % 4];
}

// Whether a targeted element with draw r is dropped at threshold t (24-bit; t >= 2^24: always).
inline bool drop(uint32_t r, uint32_t t, uint32_t always) {
    if (t == 0) return false;
    if (t >= always) return true;
    return (r >> 8) < t;
}

// The selection key of a raw element of `width` bytes: its bits without the sign bit (the
// magnitude order of IEEE values; NaN largest).
inline uint64_t key(const void* p, unsigned width) {
    uint64_t b = 0;
    memcpy(&b, p, width);
    const uint64_t mask = width == 2 ? 0x7fffull : width == 4 ? 0x7fffffffull : 0x7fffffffffffffffull;
    return b & mask;
}

}  // namespace ref
