/* The CUDA language as the emulator runs it: force-included (g++ -include emu/cuda_emu.h)
 * before a kernel source, which then compiles unchanged as C++17 (-fno-strict-aliasing
 * -ffp-contract=off, see emu/README.md).
 *
 * A CUDA thread is a fiber of the emulator (emu/emu.cpp); the built-in indices read the
 * running fiber's context. `__shared__` variables are thread_local: one OS worker runs one
 * block at a time, so each block in flight has its own copy, and the runtime fills them with
 * garbage at every block start and guards the padding after each (EMU_SHARED_ALIGN). Barriers and warp intrinsics switch fibers. */
#ifndef TD_CUDA_EMU_H
#define TD_CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* Every __shared__ variable starts on a 64-byte boundary, so that the bytes from its end to
 * the next boundary are padding: a red zone that the runtime poisons under ASan and checks in
 * the access hook (an array one element short, used through a pointer, overflows into it). */
#define EMU_SHARED_ALIGN 64
#define __shared__ thread_local __attribute__((aligned(EMU_SHARED_ALIGN)))
#define __constant__ const
#define __CUDACC_EMU__ 1

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

/* The vector types: a copy is one access of the whole vector, as on a GPU (LDG.128 / STG.64):
 * the copy reads and the assignment writes through a volatile vector-typed lvalue, so that the
 * host compiler neither splits it into member accesses nor merges it away, and the access
 * hook counts one 16- or 8-byte access per lane (traffic per instruction instance). */
typedef unsigned emu_vec16 __attribute__((vector_size(16)));
typedef unsigned long long emu_vec8;
#define EMU_VEC2(T, E, A, V)                                                                   \
    struct __align__(A) T {                                                                   \
        E x, y;                                                                               \
        T() = default;                                                                        \
        constexpr T(E x_, E y_) : x(x_), y(y_) {}                                             \
        T(const T& o) { *(V*)this = *(const volatile V*)&o; }                                 \
        T& operator=(const T& o) {                                                            \
            *(volatile V*)this = *(const V*)&o;                                               \
            return *this;                                                                     \
        }                                                                                     \
    };
#define EMU_VEC4(T, E)                                                                         \
    struct __align__(16) T {                                                                  \
        E x, y, z, w;                                                                         \
        T() = default;                                                                        \
        constexpr T(E x_, E y_, E z_, E w_) : x(x_), y(y_), z(z_), w(w_) {}                   \
        T(const T& o) { *(emu_vec16*)this = *(const volatile emu_vec16*)&o; }                 \
        T& operator=(const T& o) {                                                            \
            *(volatile emu_vec16*)this = *(const emu_vec16*)&o;                               \
            return *this;                                                                     \
        }                                                                                     \
    };
EMU_VEC2(uint2, unsigned, 8, emu_vec8)
EMU_VEC4(uint4, unsigned)
EMU_VEC2(int2, int, 8, emu_vec8)
EMU_VEC4(int4, int)
EMU_VEC4(float4, float)
EMU_VEC2(float2, float, 8, emu_vec8)
EMU_VEC2(ulonglong2, unsigned long long, 16, emu_vec16)
EMU_VEC2(longlong2, long long, 16, emu_vec16)
EMU_VEC2(double2, double, 16, emu_vec16)
#undef EMU_VEC2
#undef EMU_VEC4
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline ulonglong2 make_ulonglong2(unsigned long long x, unsigned long long y) { return ulonglong2{x, y}; }
inline longlong2 make_longlong2(long long x, long long y) { return longlong2{x, y}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

namespace emu {
/* The context of the running CUDA thread (emu.cpp). */
struct ThreadIdx {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
const ThreadIdx* idx();

/* Sync points: each switches fibers. `site` names the call site for divergence reports. */
struct Site {
    const char* file;
    int line;
};
#define EMU_SITE_ARGS const char *emu_file = __builtin_FILE(), int emu_line = __builtin_LINE()
#define EMU_SITE ::emu::Site{emu_file, emu_line}
void syncthreads(Site s);
int syncthreads_op(int pred, int op, Site s); /* op: 0 count, 1 and, 2 or */
void syncwarp(unsigned mask, Site s);
/* kind: 0 idx, 1 up, 2 down, 3 xor; returns the 64-bit value of the source lane. */
unsigned long long shfl(unsigned mask, unsigned long long v, int kind, int arg, int width, Site s);
unsigned ballot(unsigned mask, int pred, Site s);
unsigned match_any(unsigned mask, unsigned long long v, Site s);
unsigned active_mask();
[[noreturn]] void trap(const char* what);

template <class T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
}  // namespace emu

#define threadIdx (::emu::idx()->thread_idx)
#define blockIdx (::emu::idx()->block_idx)
#define blockDim (::emu::idx()->block_dim)
#define gridDim (::emu::idx()->grid_dim)
#define warpSize 32

inline void __syncthreads(EMU_SITE_ARGS) { ::emu::syncthreads(EMU_SITE); }
inline int __syncthreads_count(int p, EMU_SITE_ARGS) { return ::emu::syncthreads_op(p, 0, EMU_SITE); }
inline int __syncthreads_and(int p, EMU_SITE_ARGS) { return ::emu::syncthreads_op(p, 1, EMU_SITE); }
inline int __syncthreads_or(int p, EMU_SITE_ARGS) { return ::emu::syncthreads_op(p, 2, EMU_SITE); }
inline void __syncwarp(unsigned mask = 0xffffffffu, EMU_SITE_ARGS) { ::emu::syncwarp(mask, EMU_SITE); }
inline unsigned __activemask() { return ::emu::active_mask(); }
inline unsigned __ballot_sync(unsigned mask, int pred, EMU_SITE_ARGS) { return ::emu::ballot(mask, pred, EMU_SITE); }
inline int __any_sync(unsigned mask, int pred, EMU_SITE_ARGS) { return ::emu::ballot(mask, pred, EMU_SITE) != 0; }
inline int __all_sync(unsigned mask, int pred, EMU_SITE_ARGS) {
    return ::emu::ballot(mask, pred, EMU_SITE) == mask;
}
template <class T> inline unsigned __match_any_sync(unsigned mask, T v, EMU_SITE_ARGS) {
    return ::emu::match_any(mask, ::emu::to_bits(v), EMU_SITE);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int lane, int width = 32, EMU_SITE_ARGS) {
    return ::emu::from_bits<T>(::emu::shfl(mask, ::emu::to_bits(v), 0, lane, width, EMU_SITE));
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, EMU_SITE_ARGS) {
    return ::emu::from_bits<T>(::emu::shfl(mask, ::emu::to_bits(v), 1, (int)d, width, EMU_SITE));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, EMU_SITE_ARGS) {
    return ::emu::from_bits<T>(::emu::shfl(mask, ::emu::to_bits(v), 2, (int)d, width, EMU_SITE));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32, EMU_SITE_ARGS) {
    return ::emu::from_bits<T>(::emu::shfl(mask, ::emu::to_bits(v), 3, m, width, EMU_SITE));
}
inline void __trap() { ::emu::trap("__trap()"); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Atomics: relaxed, like CUDA's; real atomics because blocks run on several OS threads. */
template <class T> inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    float old = *p, nv;
    do nv = old + v;
    while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <class T> inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
template <class T> inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T> inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

/* Cache-hinted loads and stores: plain accesses. */
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }

/* Integer intrinsics. */
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    s &= 31;
    return s ? (hi << s) | (lo >> (32 - s)) : hi;
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    s &= 31;
    return s ? (lo >> s) | (hi << (32 - s)) : lo;
}
/* CUDA's overloaded min / max of the integer and floating types. */
template <class A, class B> inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B> inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

/* Floating point: every operation rounded to nearest on its own (the kernel TU is compiled
 * with -ffp-contract=off, so nothing is fused). */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __uint_as_float(unsigned b) { float f; memcpy(&f, &b, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned b; memcpy(&b, &f, 4); return b; }
inline float __int_as_float(int b) { float f; memcpy(&f, &b, 4); return f; }
inline int __float_as_int(float f) { int b; memcpy(&b, &f, 4); return b; }
inline double __longlong_as_double(long long b) { double d; memcpy(&d, &b, 8); return d; }
inline long long __double_as_longlong(double d) { long long b; memcpy(&b, &d, 8); return b; }

#include "include/cuda_fp16.h"

#endif /* TD_CUDA_EMU_H */
