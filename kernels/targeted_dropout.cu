// Targeted dropout on the GPU: per-filter radix select fused with a Philox Bernoulli mask.
//
// Every kernel works on the raw bits of the elements (uint16_t for f16 and bf16, uint32_t
// for f32, uint64_t for f64): the key of an element is its bits with the sign cleared, a
// dropped element becomes +0.0 (all bits zero) and a kept one is copied bit for bit. Only
// the unit scores convert to floating point.
//
// Selection (DESIGN.md): in a row of n elements the targeted set is the k smallest
// (key, index). An MSB-first radix select with 8-bit digits finds the k-th key K: a
// histogram of the top digit over the row, the bin that holds rank k-1, then the next digit
// among the elements of that bin, and so on (4 passes for f32, 2 for 16-bit types, 8 for
// f64 at most; it stops early when the chosen bin holds a single element). The short-row
// kernel first ORs every key XOR the row's first key while loading: the bits above the
// highest bit set there are common to the row, and the first digit starts below them. Elements with key < K
// are targeted; of the `ties` elements with key == K the `take` lowest-indexed are, found by
// a block-wide exclusive scan over the tied elements in index order (only when
// 0 < take < ties).
//
// Draws: element e (its flat index in the whole tensor) uses word e % 4 of Philox4x32-10 at
// counter [e / 4, offset] with key seed, and is dropped when (r >> 8) < threshold. Threads
// own aligned groups of four flat indices, so one Philox call serves four elements, and the
// same groups give 8/16/32-byte vector loads and stores.
//
// Kernels, by row length n:
// - tdw_tiny  (n <= 32): a block stages 256 rows in shared memory with coalesced loads;
//   each thread ranks the elements of one row by counting (a 32-bit targeted mask per row);
//   the tile is written back by aligned groups of four, one Philox block per group.
//   Traffic: one read and one write of the tensor.
// - tdw_block (n <= BLOCK_ROW_BYTES / sizeof): one block per row, a grid sized to the
//   machine looping over rows. The row is read from global memory once into shared memory;
//   all radix passes and the output pass read shared memory. Traffic: one read, one write.
// - tdw_long_hist / tdw_long_apply (longer rows): many blocks per row. Each histogram pass
//   is a launch; its blocks first replay the picks of the earlier passes from the global
//   histograms (256 bins each), then add their chunk's histogram. The last pass also keeps
//   each chunk's histogram, from which a chunk knows how many ties precede it. The host
//   processes rows in groups that fit in half the L2, so that only the first pass reads
//   device memory. Traffic: about one read from DRAM, (passes) reads from L2, one write.
// Unit dropout: unit_scores_* (the squared L2 norm per unit in the documented order, no
// fused multiply-add), then the weight kernels select over the scores as one row (draw
// index = unit index) and write a u8 mask per unit, then unit_apply writes the output,
// skipping the reads of dropped units.

#include <stdint.h>
#include <cuda_fp16.h>

#define BLOCK 256
#define ALWAYS (1u << 24)

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

// ---------------------------------------------------------------------------------------
// Block-wide building blocks (blockDim.x == BLOCK == 256)

struct Scratch {
    unsigned hist[256];
    unsigned warp_tot[BLOCK / 32];
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
    for (int i = 0; i < BLOCK / 32; i++) {
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

// Adds one to hist[digit] for each active lane. With `aggregate`, one atomic per distinct
// digit in the warp (__match_any_sync); otherwise one shared-memory atomic per lane. All 32
// lanes of the warp must call.
__device__ __forceinline__ void hist_add(unsigned* hist, unsigned digit, bool active, bool aggregate) {
    if (aggregate) {
        unsigned am = __ballot_sync(0xffffffffu, active);
        if (active) {
            unsigned peers = __match_any_sync(am, digit);
            if ((int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
        }
    } else if (active) {
        atomicAdd(&hist[digit], 1u);
    }
}

// ---------------------------------------------------------------------------------------
// The output pass over local indices [lo, hi) of a row whose element 0 has flat index e0.
// `src` holds the row's raw bits (shared or global memory, indexed by local index),
// `vals` the values to mask (null: the same as src), `out` / `mask` the outputs (either may
// be null), all indexed by local index. Elements with key < K are targeted; of those with
// key == K, the ones whose rank among the row's ties is below `take` are, `ties_before`
// being the number of ties before `lo`. All threads of the block call.
template <typename U>
__device__ void apply_range(const U* src, const U* vals, U* out, uint8_t* mask, uint64_t e0,
                            int64_t lo, int64_t hi, U K, unsigned take, unsigned ties,
                            unsigned ties_before, uint64_t seed, uint64_t offset, uint32_t thr,
                            Scratch& sc) {
    const U MASK = Bits<U>::MASK;
    const bool scan = take < ties;
    const uint64_t g_first = (e0 + lo) / 4, g_last = (e0 + hi - 1) / 4;
    unsigned tie_base = ties_before;
    for (uint64_t gb = g_first; gb <= g_last; gb += BLOCK) {
        const uint64_t g = gb + threadIdx.x;
        const bool gv = g <= g_last;
        const int64_t l0 = (int64_t)(4 * g) - (int64_t)e0;
        const bool full = gv && l0 >= lo && l0 + 4 <= hi;
        U kb[4];
        bool in[4];
#pragma unroll
        for (int q = 0; q < 4; q++) in[q] = gv && l0 + q >= lo && l0 + q < hi;
        if (full && aligned4<U>(src + l0)) {
            load4(src + l0, kb);
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) kb[q] = in[q] ? src[l0 + q] : (U)0;
        }
        bool tg[4], eq[4];
        unsigned eq_cnt = 0;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            U key = kb[q] & MASK;
            tg[q] = in[q] && key < K;
            eq[q] = in[q] && key == K;
            eq_cnt += eq[q];
        }
        if (scan) {
            unsigned tot;
            unsigned rank = tie_base + block_exclusive_scan(eq_cnt, sc, &tot);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (eq[q]) {
                    tg[q] = rank < take;
                    rank++;
                }
            }
            tie_base += tot;
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) tg[q] = tg[q] || eq[q];
        }
        bool dr[4];
        if (thr == ALWAYS) {
#pragma unroll
            for (int q = 0; q < 4; q++) dr[q] = tg[q];
        } else if (thr != 0 && (tg[0] || tg[1] || tg[2] || tg[3])) {
            uint4 b = philox_block(g, seed, offset);
#pragma unroll
            for (int q = 0; q < 4; q++) dr[q] = tg[q] && (word_of(b, q) >> 8) < thr;
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) dr[q] = false;
        }
        if (out) {
            U vb[4];
            if (vals == nullptr) {
#pragma unroll
                for (int q = 0; q < 4; q++) vb[q] = kb[q];
            } else if (full && aligned4<U>(vals + l0)) {
                load4(vals + l0, vb);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++) vb[q] = in[q] ? vals[l0 + q] : (U)0;
            }
#pragma unroll
            for (int q = 0; q < 4; q++) vb[q] = dr[q] ? (U)0 : vb[q];
            if (full && aligned4<U>(out + l0)) {
                store4(out + l0, vb);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++)
                    if (in[q]) out[l0 + q] = vb[q];
            }
        }
        if (mask) {
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (in[q]) mask[l0 + q] = dr[q] ? 1 : 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Short and medium rows: one block per row, the row staged in shared memory.
//
// w, vals, out: [rows, n] (vals may be null: the same as w; out or mask may be null)
// mask: [rows, n] u8. Dynamic shared memory: n rounded up to 4, times sizeof(U).
template <typename U, int LOAD_BATCH>
__device__ void tdw_block(const U* __restrict__ w, const U* vals, U* out, uint8_t* mask,
                          uint64_t rows, uint32_t n, uint32_t k, uint64_t seed, uint64_t offset,
                          uint32_t thr, uint32_t opts) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    U* s = reinterpret_cast<U*>(smem_raw);
    __shared__ Scratch sc;
    const U MASK = Bits<U>::MASK;
    for (uint64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const uint64_t e0 = row * n;
        if (threadIdx.x == 0) sc.key = 0;
        __syncthreads();
        // 1. Stage the row: aligned groups of four, vector loads where the group is whole.
        //    On the way, OR together each key XOR the first key: the bits above the highest
        //    set bit are common to the whole row, and the radix passes start below them.
        const U ref = w[e0] & MASK;
        U diff = 0;
        {
            // LOAD_BATCH groups per thread at a time, all their loads issued before any is
            // used, so that a row costs fewer serialized memory latencies (2 is the most
            // that fits in 64 registers, 4 blocks per multiprocessor, without spills).
            const uint64_t g_first = e0 / 4, g_last = (e0 + n - 1) / 4;
            for (uint64_t gb = g_first + threadIdx.x; gb <= g_last; gb += LOAD_BATCH * BLOCK) {
                U x[LOAD_BATCH][4];
                bool vec[LOAD_BATCH];
#pragma unroll
                for (int u = 0; u < LOAD_BATCH; u++) {
                    const uint64_t g = gb + (uint64_t)u * BLOCK;
                    const int64_t l0 = (int64_t)(4 * g) - (int64_t)e0;
                    vec[u] = g <= g_last && l0 >= 0 && l0 + 4 <= n && aligned4<U>(w + e0 + l0) &&
                             aligned4<U>(s + l0);
                    if (vec[u]) load4(w + e0 + l0, x[u]);
                }
#pragma unroll
                for (int u = 0; u < LOAD_BATCH; u++) {
                    const uint64_t g = gb + (uint64_t)u * BLOCK;
                    if (g > g_last) break;
                    const int64_t l0 = (int64_t)(4 * g) - (int64_t)e0;
                    if (vec[u]) {
                        store4(s + l0, x[u]);
#pragma unroll
                        for (int q = 0; q < 4; q++) diff |= (x[u][q] & MASK) ^ ref;
                    } else {
#pragma unroll
                        for (int q = 0; q < 4; q++)
                            if (l0 + q >= 0 && l0 + q < n) {
                                const U v = w[e0 + l0 + q];
                                s[l0 + q] = v;
                                diff |= (v & MASK) ^ ref;
                            }
                    }
                }
            }
        }
        {
            // Block-wide OR of diff.
            unsigned long long d = (unsigned long long)diff;
#pragma unroll
            for (int o = 16; o >= 1; o >>= 1) d |= __shfl_xor_sync(0xffffffffu, d, o);
            if ((threadIdx.x & 31) == 0) atomicOr(&sc.key, d);
        }
        __syncthreads();
        diff = (U)sc.key;
        __syncthreads();
        // 2. Radix select of the k-th key.
        U K;
        unsigned take, ties;
        if (k == n) {
            K = (U)~(U)0;  // above every key: everything is targeted
            take = 0;
            ties = 0;
        } else {
            unsigned r = k - 1;
            // Bits >= top are the same in every key (those of ref); the passes take 8-bit
            // digits from top down.
            int top = 0;
            while (top < Bits<U>::BITS && (diff >> top) != 0) top++;
            const U low = top == Bits<U>::BITS ? (U)~(U)0 : (U)(((U)1 << top) - 1);
            U prefix = ref & (U)~low, hi_mask = MASK & (U)~low;
            if (top == 0) {
                // Every key is the same.
                K = ref;
                take = k;
                ties = n;
            }
            while (top > 0) {
                const int lo = top > 8 ? top - 8 : 0;
                const unsigned dmask = (1u << (top - lo)) - 1;
                sc.hist[threadIdx.x] = 0;
                __syncthreads();
                for (uint32_t base = 0; base < n; base += BLOCK) {
                    const uint32_t i = base + threadIdx.x;
                    bool act = false;
                    unsigned d = 0;
                    if (i < n) {
                        U key = s[i] & MASK;
                        act = (key & hi_mask) == prefix;
                        d = (unsigned)(key >> lo) & dmask;
                    }
                    hist_add(sc.hist, d, act, opts & 1);
                }
                __syncthreads();
                Pick p = pick_bin(sc.hist, r, sc);
                r = p.r;
                prefix |= (U)p.bin << lo;
                hi_mask |= (U)dmask << lo;
                top = lo;
                if (top == 0) {
                    K = prefix;
                    take = r + 1;
                    ties = p.cnt;
                    break;
                }
                if (p.cnt == 1) {
                    // A single candidate is left: it is the k-th key.
                    for (uint32_t i = threadIdx.x; i < n; i += BLOCK) {
                        U key = s[i] & MASK;
                        if ((key & hi_mask) == prefix) sc.key = (unsigned long long)key;
                    }
                    __syncthreads();
                    K = (U)sc.key;
                    take = 1;
                    ties = 1;
                    __syncthreads();
                    break;
                }
            }
        }
        // 3. Targeting, draws and output in one pass over shared memory.
        apply_range<U>(s, vals ? vals + e0 : nullptr, out ? out + e0 : nullptr,
                       mask ? mask + e0 : nullptr, e0, 0, n, K, take, ties, 0, seed, offset, thr,
                       sc);
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------
// Tiny rows (n <= 32): a thread per row, 256 rows per tile.
//
// Dynamic shared memory: 256 * (n | 1) elements (an odd row stride avoids bank conflicts).
template <typename U>
__device__ void tdw_tiny(const U* __restrict__ w, const U* vals, U* out, uint8_t* mask,
                         uint64_t rows, uint32_t n, uint32_t k, uint64_t seed, uint64_t offset,
                         uint32_t thr) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    U* s = reinterpret_cast<U*>(smem_raw);
    __shared__ uint32_t targeted[BLOCK];
    const U MASK = Bits<U>::MASK;
    const uint32_t stride = n | 1;
    // i / n for i < 8192 and n <= 32: exact with a 20-bit reciprocal.
    const uint32_t magic = ((1u << 20) + n - 1) / n;
    for (uint64_t r0 = (uint64_t)blockIdx.x * BLOCK; r0 < rows; r0 += (uint64_t)gridDim.x * BLOCK) {
        const uint32_t nrows = (uint32_t)min((uint64_t)BLOCK, rows - r0);
        const uint32_t cnt = nrows * n;
        const uint64_t eb = r0 * n;
#pragma unroll 4
        for (uint32_t i = threadIdx.x; i < cnt; i += BLOCK) {
            const uint32_t r = (i * magic) >> 20, j = i - r * n;
            s[r * stride + j] = w[eb + i];
        }
        __syncthreads();
        if (threadIdx.x < nrows) {
            const U* rs = s + threadIdx.x * stride;
            uint32_t tm = 0;
            for (uint32_t j = 0; j < n; j++) {
                const U kj = rs[j] & MASK;
                uint32_t rank = 0;
                for (uint32_t i = 0; i < n; i++) {
                    const U ki = rs[i] & MASK;
                    rank += (ki < kj) || (ki == kj && i < j);
                }
                tm |= (uint32_t)(rank < k) << j;
            }
            targeted[threadIdx.x] = tm;
        }
        __syncthreads();
        // Output by aligned groups of four flat indices: one Philox block per group.
        const uint64_t g_first = eb / 4, g_last = (eb + cnt - 1) / 4;
        for (uint64_t g = g_first + threadIdx.x; g <= g_last; g += BLOCK) {
            bool tg[4], in[4];
            uint32_t idx[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const uint64_t e = 4 * g + q;
                in[q] = e >= eb && e < eb + cnt;
                const uint32_t i = in[q] ? (uint32_t)(e - eb) : 0;
                const uint32_t r = (i * magic) >> 20, j = i - r * n;
                idx[q] = r * stride + j;
                tg[q] = in[q] && ((targeted[r] >> j) & 1);
            }
            bool dr[4];
            if (thr == ALWAYS) {
#pragma unroll
                for (int q = 0; q < 4; q++) dr[q] = tg[q];
            } else if (thr != 0 && (tg[0] || tg[1] || tg[2] || tg[3])) {
                const uint4 b = philox_block(g, seed, offset);
#pragma unroll
                for (int q = 0; q < 4; q++) dr[q] = tg[q] && (word_of(b, q) >> 8) < thr;
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++) dr[q] = false;
            }
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (!in[q]) continue;
                const uint64_t e = 4 * g + q;
                if (out) out[e] = dr[q] ? (U)0 : (vals ? vals[e] : s[idx[q]]);
                if (mask) mask[e] = dr[q] ? 1 : 0;
            }
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------
// Long rows: several blocks per row, global histograms.
//
// w: the tensor; rows row0 .. row0 + gridDim.y are processed, chunk blockIdx.x of each
// (chunk elements per block). hist: [gridDim.y][passes][256] u32, zeroed before pass 0.
// chunk_hist: [gridDim.y][gridDim.x][256] u32, written by the last pass.

// Replays the picks of passes 0 .. upto-1 from the global histograms of one row.
template <typename U>
__device__ __forceinline__ void replay(const unsigned* row_hist, int upto, uint32_t k, U* prefix,
                                       unsigned* r, unsigned* cnt, Scratch& sc) {
    *prefix = 0;
    *r = k - 1;
    *cnt = 0;
    for (int p = 0; p < upto; p++) {
        Pick pk = pick_bin(row_hist + p * 256, *r, sc);
        *r = pk.r;
        *cnt = pk.cnt;
        *prefix |= (U)pk.bin << (Bits<U>::BITS - 8 - 8 * p);
    }
}

template <typename U>
__device__ void tdw_long_hist(const U* __restrict__ w, uint64_t row0, uint32_t n, uint32_t chunk,
                              uint32_t k, int pass, unsigned* hist, unsigned* chunk_hist,
                              uint32_t opts) {
    __shared__ Scratch sc;
    const int passes = Bits<U>::BITS / 8;
    const uint64_t row = row0 + blockIdx.y;
    unsigned* row_hist = hist + (uint64_t)blockIdx.y * passes * 256;
    U prefix;
    unsigned r, cnt;
    replay<U>(row_hist, pass, k, &prefix, &r, &cnt, sc);
    const int shift = Bits<U>::BITS - 8 - 8 * pass;
    const U hi_mask = pass == 0 ? (U)0 : (U)(Bits<U>::MASK & ~(U)(((U)1 << (shift + 8)) - 1));
    sc.hist[threadIdx.x] = 0;
    __syncthreads();
    const uint64_t e0 = row * n;
    const uint32_t lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    const U* x = w + e0;
    for (uint32_t base = lo; base < hi; base += 4 * BLOCK) {
        const uint32_t i0 = base + 4 * threadIdx.x;
        U kb[4];
        bool in[4];
#pragma unroll
        for (int q = 0; q < 4; q++) in[q] = i0 + q < hi;
        if (in[3] && aligned4<U>(x + i0)) {
            load4(x + i0, kb);
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) kb[q] = in[q] ? x[i0 + q] : (U)0;
        }
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const U key = kb[q] & Bits<U>::MASK;
            hist_add(sc.hist, (unsigned)(key >> shift) & 255u, in[q] && (key & hi_mask) == prefix, opts & 1);
        }
    }
    __syncthreads();
    const unsigned h = sc.hist[threadIdx.x];
    if (h) atomicAdd(&row_hist[pass * 256 + threadIdx.x], h);
    if (pass == passes - 1)
        chunk_hist[((uint64_t)blockIdx.y * gridDim.x + blockIdx.x) * 256 + threadIdx.x] = h;
}

template <typename U>
__device__ void tdw_long_apply(const U* __restrict__ w, const U* vals, U* out, uint8_t* mask,
                               uint64_t row0, uint32_t n, uint32_t chunk, uint32_t k,
                               const unsigned* hist, const unsigned* chunk_hist, uint64_t seed,
                               uint64_t offset, uint32_t thr) {
    __shared__ Scratch sc;
    const int passes = Bits<U>::BITS / 8;
    const uint64_t row = row0 + blockIdx.y;
    const unsigned* row_hist = hist + (uint64_t)blockIdx.y * passes * 256;
    U K;
    unsigned r, ties, take, before = 0;
    if (k == n) {
        K = (U)~(U)0;
        take = 0;
        ties = 0;
    } else {
        replay<U>(row_hist, passes, k, &K, &r, &ties, sc);
        take = r + 1;
        if (take < ties) {
            // Ties in the chunks before this one, from the last pass's chunk histograms.
            const unsigned* ch = chunk_hist + (uint64_t)blockIdx.y * gridDim.x * 256 + (unsigned)(K & 255);
            unsigned part = 0;
            for (uint32_t c = threadIdx.x; c < blockIdx.x; c += BLOCK) part += ch[(uint64_t)c * 256];
            unsigned tot;
            block_exclusive_scan(part, sc, &tot);
            before = tot;
        }
    }
    const uint64_t e0 = row * n;
    const uint32_t lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    apply_range<U>(w + e0, vals ? vals + e0 : nullptr, out ? out + e0 : nullptr,
                   mask ? mask + e0 : nullptr, e0, lo, hi, K, take, ties, before, seed, offset,
                   thr, sc);
}

// ---------------------------------------------------------------------------------------
// Unit scores: the squared L2 norm of each of `units` rows of n elements, in the order of
// `cpu::unit_score`: lane j (0 <= j < 1024) sums x[j + 1024 m]^2 over m in turn from +0.0,
// then lanes fold pairwise, lane[j] += lane[j + s] for s = 512 .. 1; NaN becomes canonical.
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
__device__ void unit_scores_block(const U* __restrict__ w, A* scores, uint64_t units, uint32_t n) {
    __shared__ A lanes[1024];
    for (uint64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const U* x = w + u * n;
        A acc[4] = {0, 0, 0, 0};
        // Four rounds of m at a time: 16 loads in flight, then the sums in order.
        for (uint32_t m0 = 0; m0 * 1024u < n; m0 += 4) {
            A v[4][4];
#pragma unroll
            for (int mm = 0; mm < 4; mm++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint64_t i = (uint64_t)(m0 + mm) * 1024u + threadIdx.x + 256u * q;
                    v[mm][q] = i < n ? CONV(x[i]) : (A)0;
                }
#pragma unroll
            for (int mm = 0; mm < 4; mm++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const uint64_t i = (uint64_t)(m0 + mm) * 1024u + threadIdx.x + 256u * q;
                    if (i < n) acc[q] = acc_add(acc[q], acc_mul(v[mm][q], v[mm][q]));
                }
        }
#pragma unroll
        for (int q = 0; q < 4; q++) lanes[threadIdx.x + 256 * q] = acc[q];
        __syncthreads();
        for (int s = 512; s >= 1; s >>= 1) {
            for (int j = threadIdx.x; j < s; j += BLOCK) lanes[j] = acc_add(lanes[j], lanes[j + s]);
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
__device__ void unit_scores_tiny(const U* __restrict__ w, A* scores, uint64_t units, uint32_t n) {
    for (uint64_t u = (uint64_t)blockIdx.x * BLOCK + threadIdx.x; u < units;
         u += (uint64_t)gridDim.x * BLOCK) {
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

// out[e] = umask[e / n] ? +0 : vals[e]; mask[e] = umask[e / n]. Either output may be null.
template <typename U>
__device__ void unit_apply(const U* vals, U* out, uint8_t* mask, const uint8_t* umask,
                           uint64_t numel, uint64_t n) {
    const uint64_t groups = (numel + 3) / 4;
    for (uint64_t g = (uint64_t)blockIdx.x * BLOCK + threadIdx.x; g < groups;
         g += (uint64_t)gridDim.x * BLOCK) {
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
            d[q] = in[q] && umask[u];
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
            if (full && aligned4<U>(out + e)) {
                store4(out + e, vb);
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++)
                    if (in[q]) out[e + q] = vb[q];
            }
        }
        if (mask) {
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (in[q]) mask[e + q] = d[q] ? 1 : 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// extern "C" entry points, one per width (f16 and bf16 share the 16-bit ones for selection).

#define WEIGHT_KERNELS(NAME, U)                                                                 \
    extern "C" __global__ void __launch_bounds__(BLOCK) tdw_block_##NAME(                      \
        const U* w, const U* vals, U* out, uint8_t* mask, uint64_t rows, uint32_t n,           \
        uint32_t k, uint64_t seed, uint64_t offset, uint32_t thr, uint32_t opts) {             \
        tdw_block<U, 2>(w, vals, out, mask, rows, n, k, seed, offset, thr, opts);              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) tdw_block1_##NAME(                     \
        const U* w, const U* vals, U* out, uint8_t* mask, uint64_t rows, uint32_t n,           \
        uint32_t k, uint64_t seed, uint64_t offset, uint32_t thr, uint32_t opts) {             \
        tdw_block<U, 1>(w, vals, out, mask, rows, n, k, seed, offset, thr, opts);              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) tdw_tiny_##NAME(                       \
        const U* w, const U* vals, U* out, uint8_t* mask, uint64_t rows, uint32_t n,           \
        uint32_t k, uint64_t seed, uint64_t offset, uint32_t thr) {                            \
        tdw_tiny<U>(w, vals, out, mask, rows, n, k, seed, offset, thr);                        \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) tdw_long_hist_##NAME(                  \
        const U* w, uint64_t row0, uint32_t n, uint32_t chunk, uint32_t k, int pass,          \
        unsigned* hist, unsigned* chunk_hist, uint32_t opts) {                                  \
        tdw_long_hist<U>(w, row0, n, chunk, k, pass, hist, chunk_hist, opts);                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) tdw_long_apply_##NAME(                 \
        const U* w, const U* vals, U* out, uint8_t* mask, uint64_t row0, uint32_t n,           \
        uint32_t chunk, uint32_t k, const unsigned* hist, const unsigned* chunk_hist,          \
        uint64_t seed, uint64_t offset, uint32_t thr) {                                         \
        tdw_long_apply<U>(w, vals, out, mask, row0, n, chunk, k, hist, chunk_hist, seed,       \
                          offset, thr);                                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) unit_apply_##NAME(                     \
        const U* vals, U* out, uint8_t* mask, const uint8_t* umask, uint64_t numel,            \
        uint64_t n) {                                                                           \
        unit_apply<U>(vals, out, mask, umask, numel, n);                                        \
    }

WEIGHT_KERNELS(u16, uint16_t)
WEIGHT_KERNELS(u32, uint32_t)
WEIGHT_KERNELS(u64, uint64_t)

#define SCORE_KERNELS(NAME, U, A)                                                               \
    extern "C" __global__ void __launch_bounds__(BLOCK) unit_scores_block_##NAME(              \
        const U* w, A* scores, uint64_t units, uint32_t n) {                                    \
        unit_scores_block<U, A, to_acc_##NAME>(w, scores, units, n);                            \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK) unit_scores_tiny_##NAME(               \
        const U* w, A* scores, uint64_t units, uint32_t n) {                                    \
        unit_scores_tiny<U, A, to_acc_##NAME>(w, scores, units, n);                             \
    }

SCORE_KERNELS(f32, uint32_t, float)
SCORE_KERNELS(f16, uint16_t, float)
SCORE_KERNELS(bf16, uint16_t, float)
SCORE_KERNELS(f64, uint64_t, double)
