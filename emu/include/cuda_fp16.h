/* half and bfloat16 as bit types, for kernels compiled by the emulator (emu/cuda_emu.h). */
#ifndef TD_EMU_CUDA_FP16_H
#define TD_EMU_CUDA_FP16_H
#include <stdint.h>
#include <string.h>

struct __half {
    unsigned short __x;
};
struct __nv_bfloat16 {
    unsigned short __x;
};
typedef __half half;

inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

/* Exact: every half is a float. */
inline float __half2float(__half h) {
    const uint32_t b = h.__x, sign = (b & 0x8000u) << 16, exp = (b >> 10) & 0x1f, man = b & 0x3ff;
    uint32_t f;
    if (exp == 0x1f) {
        f = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        f = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        f = sign;
    } else {
        /* Subnormal half: normalise. */
        int e = -1;
        uint32_t m = man;
        do {
            e++;
            m <<= 1;
        } while ((m & 0x400) == 0);
        f = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
    }
    float r;
    memcpy(&r, &f, 4);
    return r;
}
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t f = (uint32_t)h.__x << 16;
    float r;
    memcpy(&r, &f, 4);
    return r;
}
#endif
