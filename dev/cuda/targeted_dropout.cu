/*
Targeted weight dropout / pruning kernels, standalone (llm.c dev/cuda style): a plain CPU
reference written from DESIGN.md, the previous generation v4 (dev/cuda/weight_v4.cu, the
baseline) and the library's kernels v5 (included from kernels/weight.cu), each checked bit for bit against the reference and timed side by side with a
device-to-device copy measured in the same run.

Build (sm_90, from the repository root):
  nvcc -O3 -std=c++17 -lineinfo -arch=sm_90 -o dev/cuda/td dev/cuda/targeted_dropout.cu
Run:
  dev/cuda/td            validation (>= 1000 random cases + edge data + large shapes), then timing
  dev/cuda/td --small    a few small cases, no timing (for compute-sanitizer memcheck/racecheck)
  dev/cuda/td --check    validation only
  dev/cuda/td --emu      the --small validation, for the CPU emulator of the CUDA execution model:
                         bash scripts/emu/dev.sh builds this file with g++ and runs it (no GPU)
Or everything, sanitizers included: bash dev/cuda/run.sh

Kernel versions (v5 included from kernels/, not copied: the harness validates and times
what the library ships):
  v4  dev/cuda/weight_v4.cu (the library no longer ships it): one block per row, the row staged in shared memory, 8-bit MSB radix
      passes over shared memory, tie rank by a block scan in the output pass; tiny rows
      (n <= 32) a thread per row.
  v5  kernels/weight.cu (the library's only generation): one block per row with the row in
      registers (16-byte loads, 4 vectors per thread, block size 64..1024 picked by row
      length); the first 11-bit digit of the key counted in shared memory while loading; one
      block scan picks the bin holding rank k; only that bin's elements are compacted to
      shared memory as (key << 16 | local index) composites and resolved alone (8-bit passes
      until <= 32 are left, then one warp ranks them by shuffles): the composite of the
      rank-k element gives the key K and the tie cut as an index, so the output pass is
      "key < K || (key == K && index < cut)" with no scan. Philox only for groups of four
      that hold a targeted element, round keys in the kernel parameters. Optional packed bit
      mask (bit e of word e / 32, flat) for the backward. The table of segments (tensors) is
      passed by value in the parameters (TD_GROUP per launch): many tensors in one launch,
      a block finds its tensor by __syncthreads_count over the segments' first blocks.
      Tiny rows (n <= 32): td_tiny, tiles of 256 rows read and written once by 16-byte
      vectors, a thread ranks a row in shared memory.
  v5 bwd  td_bwd: grad * (1 - mask bit): one read of the gradient, 1/32 (f32), 1/16 (16-bit)
      or 1/8 (f64) of it more for the mask, one write.
*/
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <algorithm>
#include <vector>
#include <thread>
#include <functional>
#include <string>

#define CK(x)                                                                                 \
    do {                                                                                      \
        cudaError_t err_ = (x);                                                               \
        if (err_ != cudaSuccess) {                                                            \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(err_), __FILE__, \
                    __LINE__, #x);                                                            \
            exit(2);                                                                          \
        }                                                                                     \
    } while (0)

// =======================================================================================
// CPU reference, straight from DESIGN.md (shares nothing with the kernels)

static void ref_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static bool ref_philox_kat() {
    struct { uint32_t c[4], k[2], o[4]; } v[3] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (auto& t : v) {
        uint32_t o[4];
        ref_philox(t.c, t.k, o);
        for (int i = 0; i < 4; i++)
            if (o[i] != t.o[i]) {
                fprintf(stderr, "Philox KAT failed: word %d %08x != %08x\n", i, o[i], t.o[i]);
                return false;
            }
    }
    return true;
}

// The draw for flat index e: word e % 4 of Philox4x32-10 at counter [e/4 lo, e/4 hi, offset
// lo, offset hi] with key [seed lo, seed hi].
static uint32_t ref_draw(uint64_t e, uint64_t seed, uint64_t offset) {
    uint64_t c = e / 4;
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), (uint32_t)offset, (uint32_t)(offset >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t o[4];
    ref_philox(ctr, key, o);
    return o[e % 4];
}

static uint32_t threshold_of(double alpha) { return (uint32_t)ceil(alpha * 16777216.0); }
static uint32_t k_of(double gamma, uint32_t n) { return (uint32_t)floor(gamma * (double)n); }

// Weight dropout of a [rows, n] tensor of raw bits (U = uint32_t for f32, uint16_t for bf16).
// prune: every targeted element is dropped and no draw is made. dropped (optional): 0/1 per
// element. first_flat: flat index of element 0 (0 for a whole tensor).
template <typename U>
static void ref_weight_dropout(const U* w, U* out, uint8_t* dropped, uint64_t rows, uint32_t n,
                               double gamma, double alpha, bool prune, uint64_t seed,
                               uint64_t offset) {
    const U KEYMASK = sizeof(U) == 8 ? (U)0x7fffffffffffffffull : sizeof(U) == 4 ? (U)0x7fffffffu : (U)0x7fff;
    const uint32_t k = k_of(gamma, n), t = threshold_of(alpha);
    auto work = [&](uint64_t r0, uint64_t r1) {
        std::vector<std::pair<U, uint32_t>> pairs(n);
        std::vector<uint8_t> targeted(n);
        for (uint64_t row = r0; row < r1; row++) {
            const U* x = w + row * n;
            for (uint32_t i = 0; i < n; i++) pairs[i] = {(U)(x[i] & KEYMASK), i};
            std::sort(pairs.begin(), pairs.end());
            std::fill(targeted.begin(), targeted.end(), 0);
            for (uint32_t j = 0; j < k; j++) targeted[pairs[j].second] = 1;
            for (uint32_t i = 0; i < n; i++) {
                const uint64_t e = row * n + i;
                bool d = false;
                if (targeted[i]) d = prune ? true : (ref_draw(e, seed, offset) >> 8) < t;
                out[e] = d ? (U)0 : x[i];
                if (dropped) dropped[e] = d;
            }
        }
    };
    unsigned nt = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
    if (rows * (uint64_t)n < (1u << 16)) nt = 1;
    std::vector<std::thread> th;
    for (unsigned i = 0; i < nt; i++) {
        uint64_t a = rows * i / nt, b = rows * (i + 1) / nt;
        th.emplace_back(work, a, b);
    }
    for (auto& x : th) x.join();
}

// =======================================================================================
// v4: the previous generation of the selection kernels (dev/cuda/weight_v4.cu, with its own
// parameter structs), the timed baseline.

#include "weight_v4.cu"

// =======================================================================================
// v5, the library's kernels (kernels/weight.cu): row in registers, 11-bit first digit counted
// while loading, bin compacted and resolved alone, tie cut as an index, fused Philox mask.

#include "../../kernels/weight.cu"

// One tensor of a v5 call as the harness describes it (the launcher builds the kernel's
// TdSeg table from these).
struct V5Item {
    const void* w;
    void* out;
    uint32_t* mask;
    uint64_t offset;
    uint32_t n, k, thr, rows;
    uint32_t first_block, pad;  // unused: set by the launcher
};

// =======================================================================================
// Launchers

static int g_sms = 0;

// The library's launch of the block-per-row and tiny-row paths (src/cuda.rs: grid and shared
// memory sized the same way), through the kernels' parameter struct.
template <typename U> struct V4Fns;
template <> struct V4Fns<uint16_t> { static void* tiny() { return (void*)tdw_tiny_u16; } static void* block() { return (void*)tdw_block_u16; } };
template <> struct V4Fns<uint32_t> { static void* tiny() { return (void*)tdw_tiny_u32; } static void* block() { return (void*)tdw_block_u32; } };
template <> struct V4Fns<uint64_t> { static void* tiny() { return (void*)tdw_tiny_u64; } static void* block() { return (void*)tdw_block_u64; } };

// The library's launch of the block-per-row and tiny-row paths (as src/cuda.rs sizes grid and
// shared memory), through the kernels' parameter struct; k = 0 or threshold 0 is a copy, as
// in the library (the kernels need k >= 1, params.h).
template <typename U>
static void launch_v4(const U* w, U* out, uint64_t rows, uint32_t n, uint32_t k, uint64_t seed,
                      uint64_t offset, uint32_t thr, cudaStream_t st = 0) {
    const size_t size = sizeof(U);
    if (k == 0 || thr == 0) {
        // Nothing is dropped: the library copies and launches nothing, as here. tdw_block
        // cannot take k == 0 (kernels/params.h states each kernel's preconditions).
        CK(cudaMemcpyAsync(out, w, rows * n * size, cudaMemcpyDeviceToDevice, st));
        return;
    }
    const TdwRowsParams p = {rows, n, k, /*elem_base=*/0, {seed, offset, thr, 0}};
    // Raw-bits views per width (the kernels of one width serve it), launched with <<<>>>: the
    // emulator's build rewrites those lines.
    const uint16_t* w16 = (const uint16_t*)w;
    const uint32_t* w32 = (const uint32_t*)w;
    const uint64_t* w64 = (const uint64_t*)w;
    uint16_t* o16 = (uint16_t*)out;
    uint32_t* o32 = (uint32_t*)out;
    uint64_t* o64 = (uint64_t*)out;
    if (n <= TD_TINY_ROW) {
        void* f = V4Fns<U>::tiny();
        const size_t smem = TD_BLOCK * (n | 1) * size;
        if (smem > 48 * 1024) CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        const uint32_t grid = (uint32_t)std::min<uint64_t>((rows + TD_BLOCK - 1) / TD_BLOCK, (uint64_t)g_sms * 8);
        if (size == 2) tdw_tiny_u16<<<grid, TD_BLOCK, smem, st>>>(w16, nullptr, o16, nullptr, p);
        else if (size == 4) tdw_tiny_u32<<<grid, TD_BLOCK, smem, st>>>(w32, nullptr, o32, nullptr, p);
        else tdw_tiny_u64<<<grid, TD_BLOCK, smem, st>>>(w64, nullptr, o64, nullptr, p);
    } else {
        void* f = V4Fns<U>::block();
        const size_t smem = ((n + 3) / 4) * 4 * size;
        static size_t raised[3] = {0, 0, 0};
        size_t& rz = raised[size == 2 ? 0 : size == 4 ? 1 : 2];
        if (smem > 48 * 1024 && smem > rz) {
            CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            rz = smem;
        }
        int per_sm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, f, TD_BLOCK, smem));
        const uint32_t grid = (uint32_t)std::min<uint64_t>(rows, (uint64_t)g_sms * std::max(per_sm, 1));
        if (size == 2) tdw_block_u16<<<grid, TD_BLOCK, smem, st>>>(w16, nullptr, o16, nullptr, p);
        else if (size == 4) tdw_block_u32<<<grid, TD_BLOCK, smem, st>>>(w32, nullptr, o32, nullptr, p);
        else tdw_block_u64<<<grid, TD_BLOCK, smem, st>>>(w64, nullptr, o64, nullptr, p);
    }
    CK(cudaGetLastError());
}

// Vectors a row of n may span (it can start mid-vector when n % VE != 0).
template <typename U> static uint32_t max_vectors(uint32_t n) {
    constexpr uint32_t VE = sel::Ty<U>::VE;
    return n % VE == 0 ? n / VE : (n + 2 * VE - 2) / VE;
}
// Smallest block (64 .. 1024 threads, 4 vectors each) that holds the longest row; 0 if none.
template <typename U> static int v5_block_for(uint32_t max_n) {
    const uint32_t nv = max_vectors<U>(max_n);
    for (int t = 64; t <= 1024; t *= 2)
        if ((uint32_t)t * TD_NV >= nv) return t;
    return 0;
}

// The Philox round keys of a seed, as the library's host code computes them.
static void round_keys(uint64_t seed, uint32_t* keys) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        keys[2 * i] = k0;
        keys[2 * i + 1] = k1;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// One launch of td_block for width U and block size t (spelled out, no token pasting: the
// emulator's build rewrites each `kernel<<<...>>>(...)` line of this file).
template <typename U> static void launch_t(const TdBlockParams& p, uint32_t blocks, int t, cudaStream_t st) {
    if (sizeof(U) == 2) {
        switch (t) {
            case 64: td_block_u16_t64<<<blocks, 64, 0, st>>>(p); break;
            case 128: td_block_u16_t128<<<blocks, 128, 0, st>>>(p); break;
            case 256: td_block_u16_t256<<<blocks, 256, 0, st>>>(p); break;
            case 512: td_block_u16_t512<<<blocks, 512, 0, st>>>(p); break;
            default: td_block_u16_t1024<<<blocks, 1024, 0, st>>>(p); break;
        }
    } else if (sizeof(U) == 4) {
        switch (t) {
            case 64: td_block_u32_t64<<<blocks, 64, 0, st>>>(p); break;
            case 128: td_block_u32_t128<<<blocks, 128, 0, st>>>(p); break;
            case 256: td_block_u32_t256<<<blocks, 256, 0, st>>>(p); break;
            case 512: td_block_u32_t512<<<blocks, 512, 0, st>>>(p); break;
            default: td_block_u32_t1024<<<blocks, 1024, 0, st>>>(p); break;
        }
    } else {
        switch (t) {
            case 64: td_block_u64_t64<<<blocks, 64, 0, st>>>(p); break;
            case 128: td_block_u64_t128<<<blocks, 128, 0, st>>>(p); break;
            case 256: td_block_u64_t256<<<blocks, 256, 0, st>>>(p); break;
            case 512: td_block_u64_t512<<<blocks, 512, 0, st>>>(p); break;
            default: td_block_u64_t1024<<<blocks, 1024, 0, st>>>(p); break;
        }
    }
}

// One call over many tensors: launches of at most TD_GROUP segments, the table by value in
// the parameters (no upload). table_dev and upload are unused (kept for the call sites).
template <typename U>
static void launch_v5_segs(const std::vector<V5Item>& segs_in, void* table_dev, uint64_t seed,
                           cudaStream_t st = 0, bool upload = true) {
    (void)table_dev;
    (void)upload;
    std::vector<V5Item> segs;
    for (auto s : segs_in) {
        if (s.rows == 0 || s.n == 0) continue;
        if (((uintptr_t)s.w & 15) || ((uintptr_t)s.out & 15)) { fprintf(stderr, "v5: unaligned tensor\n"); exit(2); }
        segs.push_back(s);
    }
    for (size_t g0 = 0; g0 < segs.size(); g0 += TD_GROUP) {
        const size_t g1 = std::min(segs.size(), g0 + TD_GROUP);
        TdBlockParams p;
        memset(&p, 0, sizeof p);
        round_keys(seed, p.keys);
        uint32_t total = 0, max_n = 0;
        for (size_t i = g0; i < g1; i++) {
            TdSeg& d = p.seg[i - g0];
            d.w = (uint64_t)(uintptr_t)segs[i].w;
            d.vals = 0;
            d.out = (uint64_t)(uintptr_t)segs[i].out;
            d.bits = (uint64_t)(uintptr_t)segs[i].mask;
            d.elem_base = 0;
            d.offset = segs[i].offset;
            d.n = segs[i].n;
            d.k = segs[i].k;
            d.threshold = segs[i].thr;
            d.first_block = total;
            total += segs[i].rows;
            max_n = std::max(max_n, segs[i].n);
        }
        p.nseg = (uint32_t)(g1 - g0);
        const int T = v5_block_for<U>(max_n);
        if (T == 0) { fprintf(stderr, "v5: row of %u too long\n", max_n); exit(2); }
        launch_t<U>(p, total, T, st);
        CK(cudaGetLastError());
    }
}

template <typename U>
static void launch_v5(const U* w, U* out, uint32_t* mask, uint64_t rows, uint32_t n, uint32_t k,
                      uint64_t seed, uint64_t offset, uint32_t thr, cudaStream_t st = 0) {
    if (n <= TD_TINY_ROW) {
        // The library's tiny-row path: tiles of 256 rows (128 for 64-bit elements).
        if (((uintptr_t)w & 15) || ((uintptr_t)out & 15)) { fprintf(stderr, "v5: unaligned tensor\n"); exit(2); }
        TdTinyParams p;
        memset(&p, 0, sizeof p);
        round_keys(seed, p.keys);
        p.rows = rows;
        p.seg.w = (uint64_t)(uintptr_t)w;
        p.seg.out = (uint64_t)(uintptr_t)out;
        p.seg.bits = (uint64_t)(uintptr_t)mask;
        p.seg.offset = offset;
        p.seg.n = n;
        p.seg.k = k;
        p.seg.threshold = thr;
        const uint64_t t = sizeof(U) == 8 ? 128 : 256;
        const uint32_t grid = (uint32_t)std::min<uint64_t>((rows + t - 1) / t, (uint64_t)g_sms * 8);
        if (sizeof(U) == 2) td_tiny_u16_t256<<<grid, 256, 0, st>>>(p);
        else if (sizeof(U) == 4) td_tiny_u32_t256<<<grid, 256, 0, st>>>(p);
        else td_tiny_u64_t128<<<grid, 128, 0, st>>>(p);
        CK(cudaGetLastError());
        return;
    }
    V5Item s = {w, out, mask, offset, n, k, thr, (uint32_t)rows, 0, 0};
    launch_v5_segs<U>({s}, nullptr, seed, st);
}

template <typename U>
static void launch_bwd(const U* g, U* out, const uint32_t* mask, uint64_t numel, cudaStream_t st = 0) {
    const uint64_t nvec = numel / sel::Ty<U>::VE;
    const uint32_t grid = (uint32_t)std::max<uint64_t>(1, std::min<uint64_t>((nvec + 255) / 256, (uint64_t)g_sms * 8));
    const TdBwdParams p = {numel};
    if (sizeof(U) == 2) td_bwd_u16<<<grid, 256, 0, st>>>((const uint16_t*)g, (uint16_t*)out, mask, p);
    else if (sizeof(U) == 4) td_bwd_u32<<<grid, 256, 0, st>>>((const uint32_t*)g, (uint32_t*)out, mask, p);
    else td_bwd_u64<<<grid, 256, 0, st>>>((const uint64_t*)g, (uint64_t*)out, mask, p);
    CK(cudaGetLastError());
}

// =======================================================================================
// main: validation, then timing

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd() {  // splitmix64
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rnd01() { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }
static float randn() {
    double u1 = rnd01(), u2 = rnd01();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}
static uint32_t f32_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

// Data kinds: 0 randn, 1 few distinct values (ties), 2 edge values (+-0, subnormals, NaN,
// +-Inf, max), 3 one value, 4 +-0 only, 5 randn with 30% zeros.
template <typename U> static void fill(std::vector<U>& h, int kind) {
    const bool f32 = sizeof(U) == 4, f64 = sizeof(U) == 8;
    auto from_f = [&](float f) -> U {
        if (f64) { double d = (double)f * (1.0 + 1e-9 * (double)(rnd() % 1000)); uint64_t b; memcpy(&b, &d, 8); return (U)b; }
        uint32_t b = f32_bits(f);
        return f32 ? (U)b : (U)(b >> 16);
    };
    const uint64_t e64[] = {0ull, 0x8000000000000000ull, 1ull, 0x0008000000000000ull, 0x000fffffffffffffull,
                            0x7ff8000000000000ull, 0x7ff0000000000001ull, 0xfff8000000000000ull, 0x7ff0000000000000ull,
                            0xfff0000000000000ull, 0x7fefffffffffffffull, 0x8000000000000001ull, 0x7fffffffffffffffull};
    const uint32_t e32[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x00400000u, 0x007fffffu, 0x7fc00000u, 0x7f800001u,
                            0xffc00000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu, 0x80000001u, 0x7fffffffu};
    const uint16_t e16[] = {0x0000, 0x8000, 0x0001, 0x0040, 0x007f, 0x7fc0, 0x7f81,
                            0xffc0, 0x7f80, 0xff80, 0x7f7f, 0x8001, 0x7fff};
    U few[5];
    for (auto& v : few) v = from_f(randn());
    const U one = from_f(randn());
    for (auto& x : h) {
        switch (kind) {
            case 0: x = from_f(randn()); break;
            case 1: x = few[rnd() % 5] ^ (U)((rnd() & 1) << (8 * sizeof(U) - 1)); break;
            case 2: {
                const uint64_t r = rnd() % 20;
                x = r < 13 ? (f64 ? (U)e64[r] : f32 ? (U)e32[r] : (U)e16[r]) : from_f(randn());
                break;
            }
            case 3: x = one; break;
            case 4: x = (U)((rnd() & 1) << (8 * sizeof(U) - 1)); break;
            default: x = rnd() % 10 < 3 ? (U)0 : from_f(randn()); break;
        }
    }
}

struct DevBuf {
    void* p = nullptr;
    size_t n = 0;
    void* get(size_t bytes) {
        if (bytes > n) {
            if (p) CK(cudaFree(p));
            CK(cudaMalloc(&p, bytes));
            n = bytes;
        }
        return p;
    }
};

static int g_fail = 0;
static bool g_small = false;

template <typename U>
static void report(const char* tag, const char* what, uint64_t i, uint64_t got, uint64_t want, uint64_t in_bits, uint32_t n) {
    fprintf(stderr, "MISMATCH %s %s: element %llu (row %llu, col %llu): got %llx want %llx (input %llx)\n", tag, what,
            (unsigned long long)i, (unsigned long long)(i / n), (unsigned long long)(i % n), (unsigned long long)got,
            (unsigned long long)want, (unsigned long long)in_bits);
}

// Runs v4 and v5 (forward with mask, then backward with the mask) on one case; compares each
// with the CPU reference bit for bit. Exact-size allocations (memcheck sees overruns).
template <typename U>
static bool run_case(const char* name, uint64_t rows, uint32_t n, double gamma, double alpha, bool prune,
                     int kind, uint64_t seed, uint64_t offset, bool do_v4 = true) {
    const uint64_t numel = rows * n;
    const uint32_t k = k_of(gamma, n), thr = prune ? (uint32_t)TD_ALWAYS : threshold_of(alpha);
    std::vector<U> h(numel), ref(numel), got(numel), g(numel);
    std::vector<uint8_t> dropped(numel);
    fill(h, kind);
    fill(g, 0);
    ref_weight_dropout<U>(h.data(), ref.data(), dropped.data(), rows, n, gamma, alpha, prune, seed, offset);
    const uint64_t words = (numel + 31) / 32;
    U *dw, *dout, *dg, *dgo;
    uint32_t* dm;
    CK(cudaMalloc(&dw, numel * sizeof(U)));
    CK(cudaMalloc(&dout, numel * sizeof(U)));
    CK(cudaMalloc(&dg, numel * sizeof(U)));
    CK(cudaMalloc(&dgo, numel * sizeof(U)));
    CK(cudaMalloc(&dm, words * 4));
    CK(cudaMemcpy(dw, h.data(), numel * sizeof(U), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dg, g.data(), numel * sizeof(U), cudaMemcpyHostToDevice));
    bool ok = true;
    auto compare = [&](const char* tag, const std::vector<U>& want) {
        for (uint64_t i = 0; i < numel; i++)
            if (got[i] != want[i]) {
                report<U>(tag, name, i, got[i], want[i], h[i], n);
                fprintf(stderr, "  case: %s rows=%llu n=%u gamma=%.17g alpha=%.17g prune=%d kind=%d seed=%llx offset=%llx k=%u\n",
                        sizeof(U) == 8 ? "f64" : sizeof(U) == 4 ? "f32" : "bf16", (unsigned long long)rows, n, gamma, alpha, prune, kind,
                        (unsigned long long)seed, (unsigned long long)offset, k);
                return false;
            }
        return true;
    };
    if (do_v4) {
        CK(cudaMemset(dout, 0xAB, numel * sizeof(U)));
        launch_v4<U>(dw, dout, rows, n, k, seed, offset, thr);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got.data(), dout, numel * sizeof(U), cudaMemcpyDeviceToHost));
        ok &= compare("v4", ref);
    }
    CK(cudaMemset(dout, 0xAB, numel * sizeof(U)));
    CK(cudaMemset(dm, 0xFF, words * 4));
    launch_v5<U>(dw, dout, dm, rows, n, k, seed, offset, thr);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(got.data(), dout, numel * sizeof(U), cudaMemcpyDeviceToHost));
    ok &= compare("v5", ref);
    std::vector<uint32_t> m(words);
    CK(cudaMemcpy(m.data(), dm, words * 4, cudaMemcpyDeviceToHost));
    for (uint64_t i = 0; i < numel && ok; i++)
        if (((m[i / 32] >> (i % 32)) & 1) != dropped[i]) {
            report<U>("v5 mask", name, i, (m[i / 32] >> (i % 32)) & 1, dropped[i], h[i], n);
            ok = false;
        }
    CK(cudaMemset(dgo, 0xAB, numel * sizeof(U)));
    launch_bwd<U>(dg, dgo, dm, numel);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(got.data(), dgo, numel * sizeof(U), cudaMemcpyDeviceToHost));
    std::vector<U> gref(numel);
    for (uint64_t i = 0; i < numel; i++) gref[i] = dropped[i] ? (U)0 : g[i];
    ok &= compare("v5 bwd", gref);
    CK(cudaFree(dw)); CK(cudaFree(dout)); CK(cudaFree(dg)); CK(cudaFree(dgo)); CK(cudaFree(dm));
    if (!ok) g_fail++;
    return ok;
}

// A grouped call: item i draws at (seed, offset + i); compared with the per-tensor reference.
template <typename U>
static bool run_grouped(const char* name, const std::vector<std::pair<uint64_t, uint32_t>>& shapes, double gamma,
                        double alpha, bool random_gamma, uint64_t seed, uint64_t offset) {
    std::vector<V5Item> segs;
    std::vector<std::vector<U>> hs, refs;
    std::vector<U*> dws, douts;
    std::vector<uint32_t*> dms;
    std::vector<std::vector<uint8_t>> drops;
    for (size_t i = 0; i < shapes.size(); i++) {
        const uint64_t rows = shapes[i].first;
        const uint32_t n = shapes[i].second;
        const uint64_t numel = rows * n;
        const double gm = random_gamma ? rnd01() : gamma, al = random_gamma ? rnd01() : alpha;
        std::vector<U> h(numel), ref(numel);
        std::vector<uint8_t> dr(numel);
        fill(h, (int)(rnd() % 6));
        ref_weight_dropout<U>(h.data(), ref.data(), dr.data(), rows, n, gm, al, false, seed, offset + i);
        U *dw, *dout;
        uint32_t* dm;
        CK(cudaMalloc(&dw, numel * sizeof(U)));
        CK(cudaMalloc(&dout, numel * sizeof(U)));
        CK(cudaMalloc(&dm, (numel + 31) / 32 * 4));
        CK(cudaMemcpy(dw, h.data(), numel * sizeof(U), cudaMemcpyHostToDevice));
        CK(cudaMemset(dout, 0xAB, numel * sizeof(U)));
        CK(cudaMemset(dm, 0xFF, (numel + 31) / 32 * 4));
        segs.push_back({dw, dout, dm, offset + i, n, k_of(gm, n), threshold_of(al), (uint32_t)rows, 0, 0});
        hs.push_back(h); refs.push_back(ref); drops.push_back(dr);
        dws.push_back(dw); douts.push_back(dout); dms.push_back(dm);
    }
    V5Item* table;
    CK(cudaMalloc(&table, segs.size() * sizeof(V5Item)));
    launch_v5_segs<U>(segs, table, seed);
    CK(cudaDeviceSynchronize());
    bool ok = true;
    for (size_t i = 0; i < segs.size() && ok; i++) {
        const uint64_t numel = (uint64_t)segs[i].rows * segs[i].n;
        std::vector<U> got(numel);
        std::vector<uint32_t> m((numel + 31) / 32);
        CK(cudaMemcpy(got.data(), douts[i], numel * sizeof(U), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(m.data(), dms[i], m.size() * 4, cudaMemcpyDeviceToHost));
        for (uint64_t e = 0; e < numel; e++) {
            if (got[e] != refs[i][e] || ((m[e / 32] >> (e % 32)) & 1) != drops[i][e]) {
                fprintf(stderr, "MISMATCH v5 grouped %s: tensor %zu [%u, %u] element %llu got %llx want %llx\n", name, i,
                        segs[i].rows, segs[i].n, (unsigned long long)e, (unsigned long long)got[e],
                        (unsigned long long)refs[i][e]);
                ok = false;
                break;
            }
        }
    }
    for (size_t i = 0; i < segs.size(); i++) { CK(cudaFree(dws[i])); CK(cudaFree(douts[i])); CK(cudaFree(dms[i])); }
    CK(cudaFree(table));
    if (!ok) g_fail++;
    return ok;
}

static std::vector<std::pair<uint64_t, uint32_t>> resnet32_shapes() {
    // CIFAR ResNet-32 (n = 5 blocks per stage, option-A shortcuts): conv1, 3 stages of 10
    // 3x3 convs, the classifier. [out, in*3*3] filters.
    std::vector<std::pair<uint64_t, uint32_t>> s;
    s.push_back({16, 3 * 9});
    for (int i = 0; i < 10; i++) s.push_back({16, 16 * 9});
    s.push_back({32, 16 * 9});
    for (int i = 0; i < 9; i++) s.push_back({32, 32 * 9});
    s.push_back({64, 32 * 9});
    for (int i = 0; i < 9; i++) s.push_back({64, 64 * 9});
    s.push_back({10, 64});
    return s;
}

// ---------------------------------------------------------------------------------------
// Timing

struct Row {
    std::string kernel, shape, dtype;
    double ms, gbs, pct, speedup;
};
static std::vector<Row> g_rows;

// Median of `iters` calls (CUDA events around each), after `warm` calls. call(i) launches call i.
static double median_ms(const std::function<void(int)>& call, int iters = 30, int warm = 5) {
    for (int i = 0; i < warm; i++) call(i);
    CK(cudaDeviceSynchronize());
    std::vector<cudaEvent_t> ev(2 * iters);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(ev[2 * i]));
        call(warm + i);
        CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CK(cudaEventSynchronize(ev.back()));
    std::vector<float> t(iters);
    for (int i = 0; i < iters; i++) CK(cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]));
    for (auto& e : ev) CK(cudaEventDestroy(e));
    std::sort(t.begin(), t.end());
    return t[iters / 2];
}

static void add_row(const std::string& kernel, const std::string& shape, const std::string& dtype, double ms,
                    double bytes, double copy_ms, double base_ms) {
    Row r{kernel, shape, dtype, ms, bytes / ms / 1e6, 100.0 * copy_ms / ms, base_ms > 0 ? base_ms / ms : 0};
    g_rows.push_back(r);
    printf("%-26s %-16s %-5s %9.4f ms %8.0f GB/s %6.1f%% of copy  %s\n", kernel.c_str(), shape.c_str(), dtype.c_str(),
           ms, r.gbs, r.pct, base_ms > 0 ? (std::to_string(r.speedup).substr(0, 5) + "x v4").c_str() : "");
    fflush(stdout);
}

// One shape: copy ceiling, v4 and v5 (dropout 0.5/0.5 and prune 0.5), v5 with the mask, the
// backward. Inputs and outputs rotate over >= 256 MB. Also checks the large-shape outputs
// against the CPU reference (first buffer) before timing.
template <typename U>
static void bench_shape(uint64_t rows, uint32_t n, bool check) {
    const char* dt = sizeof(U) == 8 ? "f64" : sizeof(U) == 4 ? "f32" : "bf16";
    const std::string shape = "[" + std::to_string(rows) + "," + std::to_string(n) + "]";
    const uint64_t numel = rows * n, bytes = numel * sizeof(U);
    const int nb = (int)std::max<uint64_t>(2, (256ull << 20) / bytes + 1);
    std::vector<U*> in(nb), out(nb);
    std::vector<uint32_t*> mk(nb);
    std::vector<U> h(numel);
    fill(h, 0);
    for (int i = 0; i < nb; i++) {
        CK(cudaMalloc(&in[i], bytes));
        CK(cudaMalloc(&out[i], bytes));
        CK(cudaMalloc(&mk[i], (numel + 31) / 32 * 4));
        CK(cudaMemcpy(in[i], h.data(), bytes, cudaMemcpyHostToDevice));
    }
    const uint64_t seed = 0x0123456789abcdefull, offset = 7;
    const uint32_t k = k_of(0.5, n), thr = threshold_of(0.5);
    const bool v5ok = v5_block_for<U>(n) != 0;
    if (check) {
        std::vector<U> ref(numel), got(numel);
        for (int prune = 0; prune < 2; prune++) {
            ref_weight_dropout<U>(h.data(), ref.data(), nullptr, rows, n, 0.5, 0.5, prune, seed, offset);
            for (int ver = 4; ver <= 5; ver++) {
                if (ver == 5 && !v5ok) continue;
                CK(cudaMemset(out[0], 0xAB, bytes));
                if (ver == 4) launch_v4<U>(in[0], out[0], rows, n, k, seed, offset, prune ? (uint32_t)TD_ALWAYS : thr);
                else launch_v5<U>(in[0], out[0], nullptr, rows, n, k, seed, offset, prune ? (uint32_t)TD_ALWAYS : thr);
                CK(cudaMemcpy(got.data(), out[0], bytes, cudaMemcpyDeviceToHost));
                uint64_t bad = 0;
                for (uint64_t i = 0; i < numel; i++) bad += got[i] != ref[i];
                printf("check %s %s %s v%d: %s (%llu mismatches)\n", shape.c_str(), dt, prune ? "prune" : "dropout", ver,
                       bad ? "FAIL" : "bit-exact", (unsigned long long)bad);
                if (bad) g_fail++;
            }
        }
    }
    const double copy = median_ms([&](int i) {
        CK(cudaMemcpyAsync(out[i % nb], in[(i + 1) % nb], bytes, cudaMemcpyDeviceToDevice));
    });
    add_row("copy (ceiling)", shape, dt, copy, 2.0 * bytes, copy, 0);
    for (int prune = 0; prune < 2; prune++) {
        const uint32_t t = prune ? (uint32_t)TD_ALWAYS : thr;
        const std::string what = prune ? " prune" : " dropout";
        const double a = median_ms([&](int i) { launch_v4<U>(in[i % nb], out[i % nb], rows, n, k, seed, offset, t); });
        add_row("v4" + what, shape, dt, a, 2.0 * bytes, copy, a);
        if (v5ok) {
            const double b = median_ms([&](int i) { launch_v5<U>(in[i % nb], out[i % nb], nullptr, rows, n, k, seed, offset, t); });
            add_row("v5" + what, shape, dt, b, 2.0 * bytes, copy, a);
        }
        if (v5ok && !prune) {
            const double c = median_ms([&](int i) { launch_v5<U>(in[i % nb], out[i % nb], mk[i % nb], rows, n, k, seed, offset, t); });
            add_row("v5 dropout+bitmask", shape, dt, c, 2.0 * bytes, copy, a);
            const double d = median_ms([&](int i) { launch_bwd<U>(in[i % nb], out[i % nb], mk[(i + 1) % nb], numel); });
            add_row("v5 backward (bitmask)", shape, dt, d, 2.0 * bytes, copy, 0);
        }
    }
    for (int i = 0; i < nb; i++) { CK(cudaFree(in[i])); CK(cudaFree(out[i])); CK(cudaFree(mk[i])); }
}

// The ResNet-32 weight list: v4 one launch per tensor against v5 one grouped launch.
static void bench_resnet() {
    auto shapes = resnet32_shapes();
    const int sets = 32;  // rotate 32 copies of the model (~60 MB each way)
    uint64_t total = 0;
    for (auto& s : shapes) total += s.first * s.second;
    std::vector<uint32_t*> in(sets), out(sets);
    std::vector<uint32_t> h(total);
    fill(h, 0);
    for (int i = 0; i < sets; i++) {
        CK(cudaMalloc(&in[i], total * 4 + 16 * shapes.size()));
        CK(cudaMalloc(&out[i], total * 4 + 16 * shapes.size()));
        CK(cudaMemcpy(in[i], h.data(), total * 4, cudaMemcpyHostToDevice));
    }
    // Tensors packed in one buffer per set, each 16-byte aligned.
    std::vector<std::vector<V5Item>> segs(sets);
    std::vector<V5Item*> tables(sets);
    for (int s = 0; s < sets; s++) {
        uint64_t pos = 0;
        for (size_t i = 0; i < shapes.size(); i++) {
            const uint32_t n = shapes[i].second;
            segs[s].push_back({in[s] + pos, out[s] + pos, nullptr, 7 + i, n, k_of(0.5, n), threshold_of(0.5),
                               (uint32_t)shapes[i].first, 0, 0});
            pos += (shapes[i].first * n + 3) / 4 * 4;
        }
        CK(cudaMalloc(&tables[s], shapes.size() * sizeof(V5Item)));
        launch_v5_segs<uint32_t>(segs[s], tables[s], 1234);  // uploads the table once
    }
    CK(cudaDeviceSynchronize());
    const std::string shape = "resnet32 x" + std::to_string(shapes.size());
    const double bytes = 2.0 * total * 4;
    const double copy = median_ms([&](int i) {
        CK(cudaMemcpyAsync(out[i % sets], in[(i + 1) % sets], total * 4, cudaMemcpyDeviceToDevice));
    });
    add_row("copy (ceiling, 1 call)", shape, "f32", copy, bytes, copy, 0);
    const double a = median_ms([&](int i) {
        for (auto& sg : segs[i % sets])
            launch_v4<uint32_t>((const uint32_t*)sg.w, (uint32_t*)sg.out, sg.rows, sg.n, sg.k, 1234, sg.offset, sg.thr);
    });
    add_row("v4 one launch per tensor", shape, "f32", a, bytes, copy, a);
    const double b = median_ms([&](int i) { launch_v5_segs<uint32_t>(segs[i % sets], tables[i % sets], 1234, 0, false); });
    add_row("v5 grouped, 1 launch", shape, "f32", b, bytes, copy, a);
    for (int i = 0; i < sets; i++) { CK(cudaFree(in[i])); CK(cudaFree(out[i])); CK(cudaFree(tables[i])); }
}

int main(int argc, char** argv) {
    bool check_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small") || !strcmp(argv[i], "--emu")) g_small = true;
        else if (!strcmp(argv[i], "--check")) check_only = true;
    }
    if (!ref_philox_kat()) return 1;
    printf("Philox4x32-10 known-answer vectors: ok\n");
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);

    // Fixed edge cases: every data kind, gamma and alpha edges, odd n.
    const uint32_t ns_small[] = {1, 2, 3, 5, 9, 17, 31, 33, 100, 257, 1025};
    const uint32_t ns_full[] = {1, 2, 3, 4, 5, 7, 9, 17, 31, 32, 33, 100, 255, 257, 1023, 1024, 1025, 4095, 4096, 4097};
    const double gammas[] = {0, 1, 0.5, -1};  // -1: random
    const double alphas[] = {0, 1, 0.5, -1};
    int cases = 0;
    const int nn = g_small ? 11 : 20;
    for (int ni = 0; ni < nn; ni++)
        for (int kind = 0; kind < 6; kind++) {
            if (g_small && kind % 2) continue;
            const uint32_t n = g_small ? ns_small[ni] : ns_full[ni];
            const double gm = gammas[rnd() % 4], al = alphas[rnd() % 4];
            const double g = gm < 0 ? rnd01() : gm, a = al < 0 ? rnd01() : al;
            const uint64_t rows = 1 + rnd() % (g_small ? 4 : 9);
            const bool prune = rnd() % 8 == 0;
            const uint64_t seed = rnd(), offset = rnd();
            if (ni % 3 == 1) run_case<uint32_t>("edge", rows, n, g, a, prune, kind, seed, offset);
            else if (ni % 3 == 2) run_case<uint64_t>("edge", rows, n, g, a, prune, kind, seed, offset);
            else run_case<uint16_t>("edge", rows, n, g, a, prune, kind, seed, offset);
            cases++;
        }
    // Random cases.
    const int nrand = g_small ? 24 : 1000;
    for (int c = 0; c < nrand; c++) {
        const int width = (int)(rnd() % 5);  // 0, 1: 16-bit, 2, 3: 32-bit, 4: 64-bit
        const bool f32 = width == 2 || width == 3, f64 = width == 4;
        uint32_t n;
        const uint64_t pick = rnd() % 10;
        const uint32_t nmax = g_small ? 3000 : (f64 ? 8190 : f32 ? 16380 : 32760);
        if (pick < 3) n = 1 + rnd() % 64;
        else if (pick < 8) n = 1 + rnd() % std::min<uint32_t>(nmax, 5000);
        else n = nmax - rnd() % (nmax / 4);  // long rows
        uint64_t rows = 1 + rnd() % (g_small ? 4 : 24);
        rows = std::max<uint64_t>(1, std::min<uint64_t>(rows, (g_small ? 20000 : 400000) / n));
        const double gm = gammas[rnd() % 4], al = alphas[rnd() % 4];
        const double g = gm < 0 ? rnd01() : gm, a = al < 0 ? rnd01() : al;
        const int kind = (int)(rnd() % 6);
        const bool prune = rnd() % 8 == 0;
        const uint64_t seed = rnd(), offset = rnd();
        if (f64) run_case<uint64_t>("random", rows, n, g, a, prune, kind, seed, offset);
        else if (f32) run_case<uint32_t>("random", rows, n, g, a, prune, kind, seed, offset);
        else run_case<uint16_t>("random", rows, n, g, a, prune, kind, seed, offset);
        cases++;
    }
    // Grouped calls: the ResNet-32 list (f32 and bf16), and a random list of odd shapes with
    // more segments than threads in a block.
    run_grouped<uint32_t>("resnet32 f32", resnet32_shapes(), 0.5, 0.5, false, rnd(), rnd());
    run_grouped<uint16_t>("resnet32 bf16", resnet32_shapes(), 0.0, 0.0, true, rnd(), rnd());
    {
        std::vector<std::pair<uint64_t, uint32_t>> s;
        const int nseg = g_small ? 70 : 150;
        for (int i = 0; i < nseg; i++) s.push_back({1 + rnd() % 5, (uint32_t)(1 + rnd() % 700)});
        run_grouped<uint32_t>("random segments f32", s, 0, 0, true, rnd(), rnd());
        run_grouped<uint16_t>("random segments bf16", s, 0, 0, true, rnd(), rnd());
        run_grouped<uint64_t>("random segments f64", s, 0, 0, true, rnd(), rnd());
    }
    cases += 5;
    printf("validation: %d cases (v4, v5 forward + bit mask, v5 backward, v5 grouped), %d failed\n", cases, g_fail);
    if (g_small) return g_fail ? 1 : 0;

    // Large shapes: checked against the CPU reference, then timed.
    printf("\n%-26s %-16s %-5s %12s %13s %17s\n", "kernel", "shape", "dtype", "time", "bandwidth", "");
    bench_shape<uint32_t>(4096, 4096, true);
    bench_shape<uint16_t>(4096, 4096, true);
    bench_shape<uint32_t>(11008, 4096, true);
    bench_shape<uint16_t>(11008, 4096, true);
    if (!check_only) {
        bench_shape<uint16_t>(1 << 20, 9, true);   // tiny rows: v4 tdw_tiny against v5 td_tiny
        bench_shape<uint32_t>(1 << 20, 9, true);
        bench_resnet();
    }
    printf("\n== summary (one read + one write; %% of the copy measured in this run) ==\n");
    printf("| kernel | shape | dtype | ms | GB/s | %% of copy | vs v4 |\n|---|---|---|---|---|---|---|\n");
    for (auto& r : g_rows)
        printf("| %s | %s | %s | %.4f | %.0f | %.1f | %s |\n", r.kernel.c_str(), r.shape.c_str(), r.dtype.c_str(), r.ms,
               r.gbs, r.pct, r.speedup > 0 ? (std::to_string(r.speedup).substr(0, 4) + "x").c_str() : "");
    printf("validation failures: %d\n", g_fail);
    return g_fail ? 1 : 0;
}
