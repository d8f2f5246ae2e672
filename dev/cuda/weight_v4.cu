// v4, the previous generation of the selection kernels, kept here as the timed baseline of
// the dev harness (llm.c's dev/cuda style): the library no longer ships or launches it. Its
// launch parameters and block-wide helpers, which the library's kernels no longer use, live
// here with it.
#pragma once
#include "../../kernels/common.cuh"

// Rows whose bytes fit here are staged in shared memory, one block per row (tdw_block).
static const uint64_t TD_BLOCK_ROW_BYTES_V4 = 65536;
// Elements of a row per block in the long-row kernels.
static const uint32_t TD_LONG_CHUNK_V4 = 4096;

static_assert(TD_BLOCK == 256, "one histogram bin per thread: 256 bins of an 8-bit digit, 256 threads (pick_bin, Scratch::hist, the long-row histograms)");

/* tdw_tiny_* and tdw_block_*: `rows` rows of n elements, the k smallest (key, index) of each
 * targeted. The draw index of element i of row r is elem_base + r * n + i.
 *
 * Preconditions (the host checks them; a launch outside them is undefined):
 * - both: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block (blocks loop over the
 *   rows); rows >= 1; draws.threshold <= TD_ALWAYS; w non-null; vals, out, mask may be null
 *   (vals null: the values are w); every non-null buffer holds rows * n elements.
 * - tdw_tiny: 1 <= n <= TD_TINY_ROW (the 20-bit reciprocal that divides by n is exact only
 *   there); 0 <= k <= n; dynamic shared memory >= TD_BLOCK * (n | 1) * sizeof(element).
 * - tdw_block: 1 <= k <= n (k = 0 is refused: the radix select looks for rank k - 1, which
 *   wraps; the host copies instead, as it does for threshold 0); n <= TD_MAX_ROW; dynamic
 *   shared memory >= ceil(n / 4) * 4 * sizeof(element). */
typedef struct TdwRowsParams {
    uint64_t rows;
    uint64_t n;
    uint64_t k;
    uint64_t elem_base;
    TdDraws draws;
} TdwRowsParams;

/* tdw_long_hist_*: histogram pass `pass` over rows row0 .. row0 + gridDim.y, chunk
 * blockIdx.x of each (TD_LONG_CHUNK elements per block).
 *
 * Preconditions (tdw_long_hist and tdw_long_apply): blockDim = (TD_BLOCK, 1, 1); gridDim.x =
 * ceil(n / TD_LONG_CHUNK) and gridDim.y = the rows of the group (row0 + gridDim.y <= rows);
 * 1 <= k <= n (k = 0 wraps like tdw_block); n <= TD_MAX_ROW; no dynamic shared memory.
 * hist ([gridDim.y][passes][256], passes = 8 * sizeof(element) / 8) is zeroed before pass 0
 * and the passes 0 .. passes - 1 run in order, each after the previous one completed;
 * chunk_hist ([gridDim.y][gridDim.x][256]) is written by the last pass and needs no
 * initialisation. tdw_long_apply runs after the last pass over the same rows and grid. */
typedef struct TdwLongHistParams {
    uint64_t row0;
    uint64_t n;
    uint64_t k;
    uint32_t pass;
    uint32_t pad0;
} TdwLongHistParams;

/* tdw_long_apply_*: the output pass over the same rows and chunks. */
typedef struct TdwLongApplyParams {
    uint64_t row0;
    uint64_t n;
    uint64_t k;
    uint64_t elem_base;
    TdDraws draws;
} TdwLongApplyParams;


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

// Targeted dropout on the GPU: per-filter radix select fused with a Philox Bernoulli mask.
//
// Terms, and their textbook names (PyTorch aten/src/ATen/native/cuda/SortingRadixSelect.cuh,
// CUB's cub::BlockRadixSort / DeviceRadixSort vocabulary):
// - key: the element's bits with the sign cleared (CUB: the "bit-twiddled" unsigned key; no
//   twiddle is needed here because magnitudes of IEEE numbers order like their bits).
// - digit, pass: RADIX_BITS = 8 bits of the key from the top (MSB-first radix select, one
//   histogram of 256 bins per pass; PyTorch: RADIX_BITS = 2, RADIX_SIZE = 4 per pass).
// - prefix / hi_mask: the digits fixed by the earlier passes and the bits they cover, i.e.
//   PyTorch's `desired` / `desiredMask`: an element is still a candidate when
//   (key & hi_mask) == prefix.
// - r: the 0-based rank sought among the candidates (PyTorch's `kToFind`, minus one).
// - pick_bin: the bin whose exclusive prefix sum of counts holds rank r (CUB: the bin whose
//   "bin offset" range contains r), and the rank within it.
// - K, take, ties: the k-th smallest key (PyTorch's `topK` value), how many of the elements
//   equal to K are targeted (lowest flat index first) and how many there are.
// - draw index: the element's flat index in the whole tensor (plus elem_base for a shard),
//   the Philox counter input of DESIGN.md, "Random draws"; draw0 is that of a row's element 0.
// - d0 (the host's name): the number of filters (rows); never a position in the kernels.
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
// highest bit set there are common to the row, and the first digit starts below them.
// Elements with key < K are targeted; of the `ties` elements with key == K the `take` lowest-indexed are, found by
// a block-wide exclusive scan over the tied elements in index order (only when
// 0 < take < ties).
//
// Draws: the element with draw index e (elem_base + its flat index in the tensor; elem_base
// is 0 unless the caller passes a shard of a larger tensor) uses word e % 4 of
// Philox4x32-10 at counter [e / 4, offset] with key seed, and is dropped when
// (r >> 8) < threshold. Threads own aligned groups of four draw indices, so one Philox call
// serves four elements; the same groups give 8/16/32-byte vector loads and stores where the
// memory is aligned too (always when elem_base % 4 == 0 and the rows are, scalar otherwise).
//
// The weight kernels, by row length n (launch parameters in params.h):
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
// Positions are 64-bit wherever they can pass 2^32 (flat indices, draw indices, chunk
// starts); offsets within a row or a chunk are 32-bit (a row holds at most TD_MAX_ROW).
// Unit dropout (unit.cu) selects over the unit scores with tdw_*.

// ---------------------------------------------------------------------------------------
// The output pass over local indices [lo, hi) of a row whose element 0 has draw index draw0.
// `src` holds the row's raw bits (shared or global memory, indexed by local index),
// `vals` the values to mask (null: the same as src), `out` / `mask` the outputs (either may
// be null), all indexed by local index. Elements with key < K are targeted; of those with
// key == K, the ones whose rank among the row's ties is below `take` are, `ties_before`
// being the number of ties before `lo`. All threads of the block call.
template <typename U>
__device__ void apply_range(const U* src, const U* vals, U* out, uint8_t* mask, uint64_t draw0,
                            int64_t lo, int64_t hi, U K, unsigned take, unsigned ties,
                            unsigned ties_before, const TdDraws& dw, Scratch& sc) {
    const U MASK = Bits<U>::MASK;
    const bool scan = take < ties;
    const uint64_t g_first = (draw0 + lo) / 4, g_last = (draw0 + hi - 1) / 4;
    unsigned tie_base = ties_before;
    for (uint64_t gb = g_first; gb <= g_last; gb += TD_BLOCK) {  // hot-loop: apply, 4
        const uint64_t g = gb + threadIdx.x;
        const bool gv = g <= g_last;
        // In u64 first (well defined for draw indices past 2^63), then signed: l0 < 0 for
        // the group that starts before the range.
        const int64_t l0 = (int64_t)(4 * g - draw0);
        const bool full = gv && l0 >= lo && l0 + 4 <= hi;
        U kb[4];
        bool in[4];
#pragma unroll
        for (int q = 0; q < 4; q++) in[q] = gv && l0 + q >= lo && l0 + q < hi;
        load4_masked(src + l0, full, in, kb);
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
        drop4(tg, g, dw, dr);
        if (out) {
            U vb[4];
            if (vals == nullptr) {
#pragma unroll
                for (int q = 0; q < 4; q++) vb[q] = kb[q];
            } else {
                load4_masked(vals + l0, full, in, vb);
            }
#pragma unroll
            for (int q = 0; q < 4; q++) vb[q] = dr[q] ? (U)0 : vb[q];
            store4_masked(out + l0, full, in, vb);
        }
        if (mask) store_mask4(mask + l0, in, dr);
    }
}

// ---------------------------------------------------------------------------------------
// Short and medium rows: one block per row, the row staged in shared memory.
//
// w, vals, out: [rows, n] (vals may be null: the same as w; out or mask may be null)
// mask: [rows, n] u8. Dynamic shared memory: n rounded up to 4, times sizeof(U). The host
// sends rows of at most TD_BLOCK_ROW_BYTES_V4 here, so n fits 32 bits.
template <typename U>
__device__ void tdw_block(const U* __restrict__ w, const U* vals, U* out, uint8_t* mask,
                          const TdwRowsParams& p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    U* s = reinterpret_cast<U*>(smem_raw);
    __shared__ Scratch sc;
    const U MASK = Bits<U>::MASK;
    // Groups of four loaded per thread at a time when staging, all their loads issued before
    // any is used, so that a row costs fewer serialized memory latencies (2 is the most that
    // fits in 64 registers, 4 blocks per multiprocessor, without spills; 1 was measured 2-3%
    // slower, benches/NOTES.md v4).
    constexpr int LOAD_BATCH = 2;
    const uint64_t rows = p.rows;
    const uint32_t n = (uint32_t)p.n, k = (uint32_t)p.k;
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
            const uint64_t g_first = e0 / 4, g_last = (e0 + n - 1) / 4;
            for (uint64_t gb = g_first + threadIdx.x; gb <= g_last; gb += LOAD_BATCH * TD_BLOCK) {  // hot-loop: stage, 8
                U x[LOAD_BATCH][4];
                bool vec[LOAD_BATCH];
#pragma unroll
                for (int u = 0; u < LOAD_BATCH; u++) {
                    const uint64_t g = gb + (uint64_t)u * TD_BLOCK;
                    const int64_t l0 = (int64_t)(4 * g) - (int64_t)e0;
                    vec[u] = g <= g_last && l0 >= 0 && l0 + 4 <= n && aligned4<U>(w + e0 + l0) &&
                             aligned4<U>(s + l0);
                    if (vec[u]) load4(w + e0 + l0, x[u]);
                }
#pragma unroll
                for (int u = 0; u < LOAD_BATCH; u++) {
                    const uint64_t g = gb + (uint64_t)u * TD_BLOCK;
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
                for (uint32_t base = 0; base < n; base += TD_BLOCK) {  // hot-loop: radix pass, 1
                    const uint32_t i = base + threadIdx.x;
                    bool act = false;
                    unsigned d = 0;
                    if (i < n) {
                        U key = s[i] & MASK;
                        act = (key & hi_mask) == prefix;
                        d = (unsigned)(key >> lo) & dmask;
                    }
                    hist_add(sc.hist, d, act);
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
                    for (uint32_t i = threadIdx.x; i < n; i += TD_BLOCK) {
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
                       mask ? mask + e0 : nullptr, p.elem_base + e0, 0, n, K, take, ties, 0,
                       p.draws, sc);
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------
// Tiny rows (n <= 32): a thread per row, 256 rows per tile.
//
// Dynamic shared memory: 256 * (n | 1) elements (an odd row stride avoids bank conflicts).
template <typename U>
__device__ void tdw_tiny(const U* __restrict__ w, const U* vals, U* out, uint8_t* mask,
                         const TdwRowsParams& p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    U* s = reinterpret_cast<U*>(smem_raw);
    __shared__ uint32_t targeted[TD_BLOCK];
    const U MASK = Bits<U>::MASK;
    const uint64_t rows = p.rows;
    const uint32_t n = (uint32_t)p.n, k = (uint32_t)p.k;
    const uint32_t stride = n | 1;
    // i / n for i < 8192 and n <= 32: exact with a 20-bit reciprocal.
    const uint32_t magic = ((1u << 20) + n - 1) / n;
    for (uint64_t r0 = (uint64_t)blockIdx.x * TD_BLOCK; r0 < rows; r0 += (uint64_t)gridDim.x * TD_BLOCK) {
        const uint32_t nrows = (uint32_t)min((uint64_t)TD_BLOCK, rows - r0);
        const uint32_t cnt = nrows * n;
        const uint64_t eb = r0 * n;
#pragma unroll 4
        for (uint32_t i = threadIdx.x; i < cnt; i += TD_BLOCK) {  // hot-loop: stage, 1
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
                for (uint32_t i = 0; i < n; i++) {  // hot-loop: rank, 1/n
                    const U ki = rs[i] & MASK;
                    rank += (ki < kj) || (ki == kj && i < j);
                }
                tm |= (uint32_t)(rank < k) << j;
            }
            targeted[threadIdx.x] = tm;
        }
        __syncthreads();
        // Output by aligned groups of four draw indices: one Philox block per group. db is the
        // draw index of the tile's first element, eb its flat index.
        const uint64_t db = p.elem_base + eb;
        const uint64_t g_first = db / 4, g_last = (db + cnt - 1) / 4;
        for (uint64_t g = g_first + threadIdx.x; g <= g_last; g += TD_BLOCK) {  // hot-loop: output, 4
            bool tg[4], in[4];
            uint32_t idx[4], li[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const uint64_t e = 4 * g + q;
                in[q] = e >= db && e < db + cnt;
                const uint32_t i = in[q] ? (uint32_t)(e - db) : 0;
                const uint32_t r = (i * magic) >> 20, j = i - r * n;
                li[q] = i;
                idx[q] = r * stride + j;
                tg[q] = in[q] && ((targeted[r] >> j) & 1);
            }
            bool dr[4];
            drop4(tg, g, p.draws, dr);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (!in[q]) continue;
                const uint64_t e = eb + li[q];
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
__device__ void tdw_long_hist(const U* __restrict__ w, unsigned* hist, unsigned* chunk_hist,
                              const TdwLongHistParams& p) {
    __shared__ Scratch sc;
    const int passes = Bits<U>::BITS / 8;
    const int pass = (int)p.pass;
    const uint64_t row = p.row0 + blockIdx.y;
    unsigned* row_hist = hist + (uint64_t)blockIdx.y * passes * 256;
    U prefix;
    unsigned r, cnt;
    replay<U>(row_hist, pass, (uint32_t)p.k, &prefix, &r, &cnt, sc);
    const int shift = Bits<U>::BITS - 8 - 8 * pass;
    const U hi_mask = pass == 0 ? (U)0 : (U)(Bits<U>::MASK & ~(U)(((U)1 << (shift + 8)) - 1));
    sc.hist[threadIdx.x] = 0;
    __syncthreads();
    // The chunk: elements lo .. lo + len of the row (64-bit start, 32-bit offsets).
    const uint64_t lo = (uint64_t)blockIdx.x * TD_LONG_CHUNK_V4;
    const uint32_t len = (uint32_t)min(p.n - lo, (uint64_t)TD_LONG_CHUNK_V4);
    const U* x = w + row * p.n + lo;
    for (uint32_t base = 0; base < len; base += 4 * TD_BLOCK) {  // hot-loop: histogram, 4
        const uint32_t i0 = base + 4 * threadIdx.x;
        U kb[4];
        bool in[4];
#pragma unroll
        for (int q = 0; q < 4; q++) in[q] = i0 + q < len;
        load4_masked(x + i0, in[3], in, kb);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const U key = kb[q] & Bits<U>::MASK;
            hist_add(sc.hist, (unsigned)(key >> shift) & 255u, in[q] && (key & hi_mask) == prefix);
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
                               const unsigned* hist, const unsigned* chunk_hist,
                               const TdwLongApplyParams& p) {
    __shared__ Scratch sc;
    const int passes = Bits<U>::BITS / 8;
    const uint64_t row = p.row0 + blockIdx.y;
    const unsigned* row_hist = hist + (uint64_t)blockIdx.y * passes * 256;
    U K;
    unsigned r, ties, take, before = 0;
    if (p.k == p.n) {
        K = (U)~(U)0;
        take = 0;
        ties = 0;
    } else {
        replay<U>(row_hist, passes, (uint32_t)p.k, &K, &r, &ties, sc);
        take = r + 1;
        if (take < ties) {
            // Ties in the chunks before this one, from the last pass's chunk histograms.
            const unsigned* ch = chunk_hist + (uint64_t)blockIdx.y * gridDim.x * 256 + (unsigned)(K & 255);
            unsigned part = 0;
            for (uint32_t c = threadIdx.x; c < blockIdx.x; c += TD_BLOCK) part += ch[(uint64_t)c * 256];
            unsigned tot;
            block_exclusive_scan(part, sc, &tot);
            before = tot;
        }
    }
    const uint64_t e0 = row * p.n;
    const uint64_t lo = (uint64_t)blockIdx.x * TD_LONG_CHUNK_V4;
    const uint64_t hi = min(p.n, lo + TD_LONG_CHUNK_V4);
    apply_range<U>(w + e0, vals ? vals + e0 : nullptr, out ? out + e0 : nullptr,
                   mask ? mask + e0 : nullptr, p.elem_base + e0, (int64_t)lo, (int64_t)hi, K,
                   take, ties, before, p.draws, sc);
}

// ---------------------------------------------------------------------------------------
// extern "C" entry points, one per width (f16 and bf16 share them). Device buffers first,
// then the launch parameters (params.h) by value.

#define WEIGHT_KERNELS(NAME, U)                                                                 \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) tdw_block_##NAME(                      \
        const U* w, const U* vals, U* out, uint8_t* mask, const TdwRowsParams p) {             \
        tdw_block<U>(w, vals, out, mask, p);                                                    \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) tdw_tiny_##NAME(                       \
        const U* w, const U* vals, U* out, uint8_t* mask, const TdwRowsParams p) {             \
        tdw_tiny<U>(w, vals, out, mask, p);                                                     \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) tdw_long_hist_##NAME(                  \
        const U* w, unsigned* hist, unsigned* chunk_hist, const TdwLongHistParams p) {         \
        tdw_long_hist<U>(w, hist, chunk_hist, p);                                               \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK) tdw_long_apply_##NAME(                 \
        const U* w, const U* vals, U* out, uint8_t* mask, const unsigned* hist,                \
        const unsigned* chunk_hist, const TdwLongApplyParams p) {                               \
        tdw_long_apply<U>(w, vals, out, mask, hist, chunk_hist, p);                             \
    }

WEIGHT_KERNELS(u16, uint16_t)
WEIGHT_KERNELS(u32, uint32_t)
WEIGHT_KERNELS(u64, uint64_t)
