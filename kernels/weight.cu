// Targeted weight dropout on the GPU: per-filter radix select fused with a Philox Bernoulli
// mask, and the bit-mask backward. Launch parameters (TdBlockParams, TdTinyParams,
// TdLongParams, TdBwdParams) and the constants (TD_RADIX_BITS, TD_RADIX_BINS, ...) in
// params.h. The previous generation (v4: rows staged in shared memory, 8-bit digits) is the
// dev harness's baseline, dev/cuda/weight_v4.cu; the library ships only these kernels.
//
// Terms, and their textbook names (PyTorch aten/src/ATen/native/cuda/SortingRadixSelect.cuh,
// CUB's cub::BlockRadixSort / DeviceRadixSort vocabulary):
// - key: the element's bits with the sign cleared (CUB: the "bit-twiddled" unsigned key; no
//   twiddle is needed because magnitudes of IEEE numbers order like their bits).
// - composite: (key << index bits | local index): unique within a row and ordered exactly as
//   (key, flat index), the order of DESIGN.md's selection, so ties need no special case.
// - digit, pass: RADIX_BITS = TD_RADIX_BITS = 11 bits from the top (MSB-first radix select,
//   one histogram of TD_RADIX_BINS = 2048 bins; PyTorch: RADIX_BITS = 2, RADIX_SIZE = 4),
//   then CAND_BITS = 8-bit digits over the few compacted candidates.
// - prefix / fixed: the digits fixed so far and how many bits they cover (PyTorch's `desired`
//   / `desiredMask`): a composite is still a candidate when its top `fixed` bits equal it.
// - r: the 0-based rank sought among the candidates (PyTorch's `kToFind`, minus one); the
//   result is the composite of rank k: the key K and the tie cut, an index.
// - pick: the bin whose exclusive prefix sum of counts holds rank r (CUB: the bin whose
//   "bin offset" range contains r), the rank within it and the bin's count.
// - draw index: the element's flat index in the whole tensor (plus elem_base for a shard),
//   the Philox counter input of DESIGN.md, "Random draws".
// Every kernel works on the raw bits (uint16_t for f16 and bf16, uint32_t for f32, uint64_t
// for f64): a dropped element becomes +0.0 (all bits zero), a kept one is copied bit for bit.
// The kernels, by row length (the host's plan, src/plan/weight.rs, picks one): td_tiny (rows
// of at most TD_TINY_ROW), td_block (rows a block of up to TD_MAX_THREADS holds in
// registers; many tensors per launch), td_long_* (longer rows, many blocks per row). Unit
// dropout (unit.cu) selects over the unit scores with them, writing a bit per unit.
//
// td_block_<width>_t<T> (T = 64, 128, 256, 512, 1024 threads; the host takes the smallest
// that holds the longest row of the launch, TD_NV 16-byte vectors per thread):
// 1. The block finds its segment (one tensor of a grouped call) among the launch's table by
//    __syncthreads_count over the segments' first blocks, and its row in it.
// 2. The row is loaded into registers by 16-byte vectors (the first and last vector of a row
//    that does not start or end on a vector boundary element by element, so no byte outside
//    the row is read or written) and the first digit of every key (its top TD_RADIX_BITS = 11
//    bits) is counted into a TD_RADIX_BINS-bin shared histogram on the way.
// 3. One block scan picks the bin that holds rank k (0-based: the smallest element that is not
//    targeted; 0 < k < n here). Only that bin's elements are then
//    compacted to shared memory, as composites (key << 16 | local index): unique, and ordered
//    exactly as (key, flat index) within the row, so ties need no special case. 8-bit passes
//    over that short list until at most TD_WARP_RANK = 32 are left, then one warp ranks them
//    by shuffles.
//    The result is the composite of the rank-k element: the key K and the tie cut, an index;
//    the targeted elements are those whose composite is below it. Heavy ties (more than
//    TD_CAP elements in the bin, e.g. an all-zero row) refine by 11-bit digits of the
//    composite over the registers first (always ends: composites are unique).
// 4. The output pass from the registers: targeted iff key < K || (key == K && index < cut); a
//    Philox block only for a group of four draws that holds a targeted element (none at all
//    when alpha = 0 or for pruning), round keys from the parameters; one 16-byte store per
//    vector; optionally the flat bit mask of the dropped elements (bit e % 32 of word e / 32),
//    the row's whole words stored and the two shared with the neighbour rows merged by
//    atomics on the row's own bits.
// Traffic: one read of the row (two with `vals`, the recomputing backward), one write, and
// n / 8 bytes of mask when asked.
//
// td_tiny_<width>_t<T> (rows of at most TD_TINY_ROW): tiles of T rows per block, one read
// and one write; see the kernel.
//
// td_bwd_<width>: the backward from the mask: out[e] = bit e ? +0 : g[e]; one read of g,
// 1/32, 1/16 or 1/8 (f32, 16-bit, f64) of it more for the mask, one write.
//
// td_mask_u8: the u8 flags of `targeted_dropout_mask` from the bit mask that the selection
// kernels wrote (n / 8 bytes read, n written).
//
// td_pack_count, td_pack_<width>, td_unpack_<width>: the dropped elements' original values
// packed by the bit mask (what `VarMapDropout` holds between `apply` and `finish`) and put
// back; n / 8 bytes of mask and the dropped elements read or written.

#include "common.cuh"

namespace sel {

static_assert(TD_MAX_THREADS * TD_NV * 8 <= 65536,
              "a local index (at most TD_MAX_THREADS * TD_NV * 8 slots) fits the 16 low bits of a composite");
static_assert(TD_PACK_CHUNK == 32 * TD_BLOCK, "a mask word per thread of a pack block");
static_assert(TD_GROUP <= 64, "a block of the smallest size (64 threads) reads every segment's first block at once");
static_assert(sizeof(TdBlockParams) <= 4096, "the launch parameters fit the 4 KB that every driver accepts");

constexpr int RADIX_BITS = TD_RADIX_BITS;  // digits of the keys and composites
constexpr int NBINS = TD_RADIX_BINS;
constexpr int CAND_BITS = TD_CAND_RADIX_BITS;  // digits of the compacted candidates
constexpr int CAND_BINS = TD_CAND_RADIX_BINS;
static_assert(NBINS == 1 << RADIX_BITS && CAND_BINS == 1 << CAND_BITS, "a bin per digit value");
static_assert(TD_WARP_RANK == 32, "one warp ranks the last candidates");
constexpr int CAP = TD_CAP; // candidates compacted to shared memory at most
constexpr int NV = TD_NV;   // 16-byte vectors per thread

// Per element width: elements per 16-byte vector, key bits, the key and composite types.
template <typename U> struct Ty;
template <> struct Ty<uint16_t> {
    static constexpr int VE = 8;
    static constexpr int KB = 15;
    typedef uint32_t Key;
    typedef uint64_t Comp;
};
template <> struct Ty<uint32_t> {
    static constexpr int VE = 4;
    static constexpr int KB = 31;
    typedef uint32_t Key;
    typedef uint64_t Comp;
};
template <> struct Ty<uint64_t> {
    static constexpr int VE = 2;
    static constexpr int KB = 63;
    typedef uint64_t Key;
    typedef unsigned __int128 Comp;  // 63 key bits + 16 index bits
};

__device__ __forceinline__ uint32_t word_at(const uint4& v, int j) {
    return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}
__device__ __forceinline__ void set_word(uint4& v, int j, uint32_t x) {
    if (j == 0) v.x = x;
    else if (j == 1) v.y = x;
    else if (j == 2) v.z = x;
    else v.w = x;
}
// Raw bits of element q of a vector (q a compile-time constant after unrolling).
template <typename U> __device__ __forceinline__ typename Ty<U>::Key elem(const uint4& v, int q) {
    if (sizeof(U) == 8) return (uint64_t)word_at(v, 2 * q) | ((uint64_t)word_at(v, 2 * q + 1) << 32);
    if (sizeof(U) == 4) return word_at(v, q);
    return (q & 1) ? (word_at(v, q >> 1) >> 16) : (word_at(v, q >> 1) & 0xffffu);
}
template <typename U> __device__ __forceinline__ void set_elem(uint4& v, int q, typename Ty<U>::Key x) {
    if (sizeof(U) == 8) {
        set_word(v, 2 * q, (uint32_t)x);
        set_word(v, 2 * q + 1, (uint32_t)((uint64_t)x >> 32));
    } else if (sizeof(U) == 4) {
        set_word(v, q, (uint32_t)x);
    } else {
        uint32_t w = word_at(v, q >> 1);
        w = (q & 1) ? ((w & 0xffffu) | ((uint32_t)x << 16)) : ((w & 0xffff0000u) | ((uint32_t)x & 0xffffu));
        set_word(v, q >> 1, w);
    }
}
template <typename U> __device__ __forceinline__ typename Ty<U>::Key key_of(const uint4& v, int q) {
    return elem<U>(v, q) & (typename Ty<U>::Key)Bits<U>::MASK;
}
// The vector with the elements whose bit is set in `dropped` zeroed (+0.0).
template <typename U> __device__ __forceinline__ uint4 zero_dropped(uint4 y, uint32_t dropped) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        // The elements of word j: 2 of them (16-bit), 1 (32-bit), half of one (64-bit).
        uint32_t m;
        if (sizeof(U) == 2) {
            m = ((dropped >> (2 * j)) & 1 ? 0xffffu : 0u) | ((dropped >> (2 * j + 1)) & 1 ? 0xffff0000u : 0u);
        } else if (sizeof(U) == 4) {
            m = (dropped >> j) & 1 ? 0xffffffffu : 0u;
        } else {
            m = (dropped >> (j >> 1)) & 1 ? 0xffffffffu : 0u;
        }
        set_word(y, j, word_at(y, j) & ~m);
    }
    return y;
}

// Philox4x32-10 of counter [g lo, g hi, offset lo, offset hi] with the round keys of the
// parameters (keys[2 i], keys[2 i + 1]: round i). The same function as common.cuh's
// philox_block with the key schedule precomputed by the host.
__device__ __forceinline__ uint4 philox_rk(uint64_t g, uint64_t offset, const uint32_t* keys) {
    uint32_t c0 = (uint32_t)g, c1 = (uint32_t)(g >> 32), c2 = (uint32_t)offset, c3 = (uint32_t)(offset >> 32);
#pragma unroll
    for (int i = 0; i < 10; i++) {
        const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const uint32_t n0 = hi1 ^ c1 ^ keys[2 * i];
        const uint32_t n2 = hi0 ^ c3 ^ keys[2 * i + 1];
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
    }
    return make_uint4(c0, c1, c2, c3);
}

// The dropped subset of `targeted` (bit q: element q of a vector of VE elements whose draw
// indices are draw_first .. draw_first + VE - 1). Element q's draw falls in group
// draw_first / 4 + (sh + q) / 4, word (sh + q) % 4, with sh = draw_first % 4; group h of the
// vector covers the elements of bits (15 << 4 h) >> sh. One Philox block per group that holds
// a targeted element.
// sh is passed in so that the caller can hoist it (the same for every vector when VE >= 4).
template <int VE>
__device__ __forceinline__ uint32_t dropped_of(uint32_t targeted, uint64_t draw_first, uint32_t sh,
                                               uint32_t threshold, uint64_t offset, const uint32_t* keys) {
    constexpr int GROUPS = (VE + 3) / 4 + 1;  // groups a vector may touch
    constexpr uint32_t ALL = (1u << VE) - 1;
    const uint64_t g0 = draw_first / 4;
    uint32_t hit = 0;
#pragma unroll
    for (int h = 0; h < GROUPS; h++) {
        const uint32_t in_group = ((15u << (4 * h)) >> sh) & ALL;
        if (targeted & in_group) {
            const uint4 b = philox_rk(g0 + h, offset, keys);
            const uint32_t r = (uint32_t)((b.x >> 8) < threshold) | ((uint32_t)((b.y >> 8) < threshold) << 1) |
                               ((uint32_t)((b.z >> 8) < threshold) << 2) | ((uint32_t)((b.w >> 8) < threshold) << 3);
            hit |= ((r << (4 * h)) >> sh) & in_group;
        }
    }
    return targeted & hit;
}

template <int T> struct __align__(16) Smem {
    uint32_t hist[NBINS];
    uint32_t warp_tot[T / 32];
    uint32_t sel[3];
    uint32_t ncand;
    int seg;
};

// Exclusive scan of one value per thread over the block. All threads call; it ends after a
// barrier that follows every write of warp_tot, and the caller's next barrier follows its
// reads.
template <int T> __device__ __forceinline__ uint32_t block_excl_scan(uint32_t v, uint32_t* warp_tot) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    uint32_t x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_tot[wid] = x;
    __syncthreads();
    uint32_t base = 0;
    for (int i = 0; i < wid; i++) base += warp_tot[i];
    return base + x - v;
}

// The bin of hist[0 .. NB) that holds rank r (0-based; r < the histogram's total): sel[0] =
// bin, sel[1] = rank within it, sel[2] = its count. All threads call, after a barrier that
// completes the histogram; returns after a barrier, so sel may be read at once.
template <int T, int NB> __device__ __forceinline__ void pick(const uint32_t* hist, uint32_t r, Smem<T>& sm) {
    constexpr int PER = NB >= T ? NB / T : 1;  // bins per thread
    const int b0 = threadIdx.x * PER;
    const bool owns = b0 < NB;
    uint32_t s = 0;
    if (owns) {
#pragma unroll
        for (int i = 0; i < PER; i++) s += hist[b0 + i];
    }
    const uint32_t ex = block_excl_scan<T>(s, sm.warp_tot);
    if (owns && r >= ex && r - ex < s) {
        // The one thread whose bins hold rank r walks them again.
        uint32_t c = r - ex;
        for (int i = 0; i < PER; i++) {
            const uint32_t h = hist[b0 + i];
            if (c < h) {
                sm.sel[0] = b0 + i;
                sm.sel[1] = c;
                sm.sel[2] = h;
                break;
            }
            c -= h;
        }
    }
    __syncthreads();
}

// 64-bit halves of a composite, for the shuffles.
__device__ __forceinline__ uint64_t shfl_comp(uint64_t c, int l) { return __shfl_sync(0xffffffffu, c, l); }
__device__ __forceinline__ unsigned __int128 shfl_comp(unsigned __int128 c, int l) {
    const uint64_t lo = __shfl_sync(0xffffffffu, (uint64_t)c, l);
    const uint64_t hi = __shfl_sync(0xffffffffu, (uint64_t)(c >> 64), l);
    return ((unsigned __int128)hi << 64) | lo;
}

// The last step of a select, by the first warp (all 32 lanes call it): the cnt <= 32
// composites of cand[0 .. m) whose top `fixed` bits (of CW) equal `prefix` are gathered into
// small[0 .. cnt) in order, ranked by shuffles, and the lane holding rank r gets it in `out`
// and true. Composites are unique, so exactly one lane returns true.
template <int CW, typename Comp>
__device__ __forceinline__ bool warp_pick(const Comp* cand, uint32_t m, Comp prefix, int fixed, uint32_t cnt,
                                          uint32_t r, Comp* small, Comp& out) {
    const int tid = threadIdx.x;
    uint32_t base = 0;
    for (uint32_t j0 = 0; j0 < m; j0 += 32) {
        const uint32_t j = j0 + tid;
        const Comp c = j < m ? cand[j] : (Comp)0;
        const bool hit = j < m && (c >> (CW - fixed)) == prefix;
        const uint32_t b = __ballot_sync(0xffffffffu, hit);
        if (hit) small[base + __popc(b & ((1u << tid) - 1))] = c;
        base += __popc(b);
    }
    __syncwarp();
    const Comp mine = tid < (int)cnt ? small[tid] : ~(Comp)0;
    uint32_t rank = 0;
#pragma unroll
    for (int l = 0; l < 32; l++) rank += shfl_comp(mine, l) < mine;
    out = mine;
    return tid < (int)cnt && rank == r;
}

// The staged mask words of flat elements e0 .. e0 + len - 1 (word j of the stage is word
// fw0 + j of the tensor's mask) to the mask: whole words stored, the two shared with the
// neighbours (other blocks' rows) merged with atomics on these elements' bits only. All
// threads call, after a barrier that completes the stage.
template <int T>
__device__ __forceinline__ void flush_mask(uint32_t* mask, const uint32_t* staged, uint32_t nwords, uint64_t fw0,
                                           uint64_t e0, uint64_t len) {
    for (uint32_t j = threadIdx.x; j < nwords; j += T) {
        const uint64_t lo = (fw0 + j) * 32;  // flat index of bit 0 of the word
        const uint64_t a = max(lo, e0), b = min(lo + 32, e0 + len);
        const uint32_t cnt = (uint32_t)(b - a), sh = (uint32_t)(a - lo);
        const uint32_t own = cnt >= 32 ? 0xffffffffu : (((1u << cnt) - 1) << sh);
        if (own == 0xffffffffu) {
            mask[fw0 + j] = staged[j];
        } else {
            atomicAnd(&mask[fw0 + j], ~own);
            atomicOr(&mask[fw0 + j], staged[j] & own);
        }
    }
}

template <typename U, int T>
__device__ __forceinline__ void td_block(const TdBlockParams& p) {
    typedef typename Ty<U>::Key Key;
    typedef typename Ty<U>::Comp Comp;
    constexpr int VE = Ty<U>::VE, KB = Ty<U>::KB;
    constexpr Key KMASK = (Key)Bits<U>::MASK;
    constexpr uint32_t FULL = (1u << VE) - 1;
    constexpr int CW = KB + 16;                   // composite width
    constexpr int BITW = T * NV * VE / 32 + 2;    // mask words a row touches at most
    __shared__ Smem<T> sm;
    __shared__ Comp cand[CAP];
    __shared__ Comp small[TD_WARP_RANK];
    __shared__ uint32_t bits[BITW];
    const int tid = threadIdx.x;

    // 1. Segment and row of this block: the last segment whose first block is <= blockIdx.x.
    //    (nseg <= TD_GROUP <= T: one count.)
    {
        const int s = __syncthreads_count(tid < (int)p.nseg && p.seg[tid].first_block <= blockIdx.x);
        if (tid == 0) sm.seg = s - 1;
    }
    __syncthreads();
    const TdSeg& sg = p.seg[sm.seg];
    const uint32_t row = blockIdx.x - sg.first_block;
    const uint32_t n = sg.n, k = sg.k, thr = sg.threshold;
    const U* w = reinterpret_cast<const U*>(sg.w);
    const U* vals = reinterpret_cast<const U*>(sg.vals ? sg.vals : sg.w);
    U* out = reinterpret_cast<U*>(sg.out);
    uint32_t* mask = reinterpret_cast<uint32_t*>(sg.bits);
    const uint64_t e0 = (uint64_t)row * n;           // flat index of the row's element 0
    const uint64_t gv0 = e0 / VE;                    // the row's first vector (flat)
    const uint32_t off = (uint32_t)(e0 - gv0 * VE);  // its slot of the row's element 0
    const uint32_t nvr = (off + n + VE - 1) / VE;    // vectors that hold row elements
    // Slot s of the row is flat index gv0 * VE + s, local index s - off.
    const uint4* wv = reinterpret_cast<const uint4*>(w + gv0 * VE);
    const uint4* vv = reinterpret_cast<const uint4*>(vals + gv0 * VE);
    uint4* ov = reinterpret_cast<uint4*>(out + gv0 * VE);
    const U* ws = w + gv0 * VE;
    const U* vs = vals + gv0 * VE;
    U* os = out + gv0 * VE;
    // A selection seeks rank k, the first element not targeted: 0 < k < n (k = 0 or
    // threshold 0: nothing is dropped; k = n: everything is targeted, no selection).
    const bool select = k > 0 && k < n && thr != 0;
    const uint32_t a32 = (uint32_t)((gv0 * VE) & 31);  // bit of slot 0 in its mask word
    const uint32_t nwords = (a32 + off + n - 1) / 32 + 1;

    // 2. Zero the histogram (and the staged mask words), load the row: whole vectors with one
    //    16-byte load, the row's partial first and last vector element by element.
    if (select) {
        for (int i = tid; i < NBINS / 4; i += T) reinterpret_cast<uint4*>(sm.hist)[i] = make_uint4(0, 0, 0, 0);
        if (tid == 0) sm.ncand = 0;
    }
    if (mask)
        for (int i = tid; i < (int)nwords; i += T) bits[i] = 0;
    uint4 x[NV];
    uint32_t valid[NV];  // the row's elements of each vector, one bit per element
#pragma unroll
    for (int v = 0; v < NV; v++) {
        const uint32_t vi = v * T + tid, s0 = vi * VE;
        x[v] = make_uint4(0, 0, 0, 0);
        valid[v] = 0;
        if (vi < nvr) {
            if (s0 >= off && s0 + VE <= off + n) {
                x[v] = __ldcs(wv + vi);
                valid[v] = FULL;
            } else {
#pragma unroll
                for (int q = 0; q < VE; q++)
                    if (s0 + q >= off && s0 + q < off + n) {
                        set_elem<U>(x[v], q, (Key)ws[s0 + q]);
                        valid[v] |= 1u << q;
                    }
            }
        }
    }
    __syncthreads();

    // f(key, slot) for every element of the row this thread holds.
    auto each = [&](auto&& f) {
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const uint32_t s0 = (v * T + tid) * VE;
            if (valid[v] == FULL) {
#pragma unroll
                for (int q = 0; q < VE; q++) f(key_of<U>(x[v], q), s0 + q);
            } else if (valid[v]) {
#pragma unroll
                for (int q = 0; q < VE; q++)
                    if ((valid[v] >> q) & 1) f(key_of<U>(x[v], q), s0 + q);
            }
        }
    };

    // 3. Selection: the composite (key << 16 | local index) of the rank-k element.
    Key cut_key = 0;       // targeted iff key < cut_key || (key == cut_key && slot < cut_slot)
    uint32_t cut_slot = 0;
    if (select) {
        each([&](Key key, uint32_t) { atomicAdd(&sm.hist[(uint32_t)(key >> (KB - RADIX_BITS))], 1u); });
        __syncthreads();
        pick<T, NBINS>(sm.hist, k, sm);
        Comp prefix = sm.sel[0];  // the top `fixed` bits of the sought composite
        int fixed = RADIX_BITS;
        uint32_t r = sm.sel[1], cnt = sm.sel[2];
        // Rare: more than CAP candidates (heavy ties): refine by 11-bit digits over the
        // registers until the bin fits (composites are unique, so it ends).
        while (cnt > CAP) {
            const int D = min(RADIX_BITS, CW - fixed);
            for (int i = tid; i < NBINS / 4; i += T) reinterpret_cast<uint4*>(sm.hist)[i] = make_uint4(0, 0, 0, 0);
            __syncthreads();
            each([&](Key key, uint32_t s) {
                const Comp c = ((Comp)key << 16) | (s - off);
                if ((c >> (CW - fixed)) == prefix)
                    atomicAdd(&sm.hist[(uint32_t)(c >> (CW - fixed - D)) & ((1u << D) - 1)], 1u);
            });
            __syncthreads();
            pick<T, NBINS>(sm.hist, r, sm);
            prefix = (prefix << D) | sm.sel[0];
            fixed += D;
            r = sm.sel[1];
            cnt = sm.sel[2];
        }
        // Compact the candidates (cnt of them) to shared memory.
        if (fixed <= KB) {
            const Key klo = (Key)(prefix << (KB - fixed)), kw = (Key)1 << (KB - fixed);
            each([&](Key key, uint32_t s) {
                if (key - klo < kw) cand[atomicAdd(&sm.ncand, 1u)] = ((Comp)key << 16) | (s - off);
            });
        } else {
            each([&](Key key, uint32_t s) {
                const Comp c = ((Comp)key << 16) | (s - off);
                if ((c >> (CW - fixed)) == prefix) cand[atomicAdd(&sm.ncand, 1u)] = c;
            });
        }
        __syncthreads();
        const uint32_t m = cnt;
        // CAND_BITS-bit passes over the candidates until at most TD_WARP_RANK are left.
        while (cnt > TD_WARP_RANK) {
            const int D = min(CAND_BITS, CW - fixed);
            for (int i = tid; i < CAND_BINS; i += T) sm.hist[i] = 0;
            __syncthreads();
            for (uint32_t j = tid; j < m; j += T) {
                const Comp c = cand[j];
                if ((c >> (CW - fixed)) == prefix)
                    atomicAdd(&sm.hist[(uint32_t)(c >> (CW - fixed - D)) & ((1u << D) - 1)], 1u);
            }
            __syncthreads();
            pick<T, CAND_BINS>(sm.hist, r, sm);
            prefix = (prefix << D) | sm.sel[0];
            fixed += D;
            r = sm.sel[1];
            cnt = sm.sel[2];
        }
        // One warp: gather the <= 32 candidates under the prefix, rank them, keep rank r.
        if (tid < 32) {
            Comp mine;
            const bool found = warp_pick<CW>(cand, m, prefix, fixed, cnt, r, small, mine);
            // small[] is reused as the result slot: every lane has read it (shuffles inside).
            __syncwarp();
            if (found) small[0] = mine;
        }
        __syncthreads();
        const Comp kc = small[0];
        cut_key = (Key)(kc >> 16);
        cut_slot = (uint32_t)(kc & 0xffffu) + off;
    } else if (k == n && k > 0 && thr != 0) {
        // Everything targeted: the cut is past the last slot of the largest key.
        cut_key = KMASK;
        cut_slot = nvr * VE;
    }

    // 4. Targeting, draws, output (and mask bits) from the registers.
    const bool draws = thr != 0 && thr != (uint32_t)TD_ALWAYS;
    const uint64_t draw_slot0 = sg.elem_base + gv0 * VE;  // draw index of slot 0
#pragma unroll
    for (int v = 0; v < NV; v++) {
        if (!valid[v]) continue;
        const uint32_t vi = v * T + tid, s0 = vi * VE;
        uint32_t tg = 0;
#pragma unroll
        for (int q = 0; q < VE; q++) {
            const Key key = key_of<U>(x[v], q);
            tg |= (uint32_t)(key < cut_key || (key == cut_key && s0 + q < cut_slot)) << q;
        }
        tg &= valid[v];
        // draw_slot0 + s0 % 4: s0 is a multiple of 4 when VE >= 4.
        const uint32_t sh = (uint32_t)((VE >= 4 ? draw_slot0 : draw_slot0 + s0) & 3);
        const uint32_t dr = draws && tg ? dropped_of<VE>(tg, draw_slot0 + s0, sh, thr, sg.offset, p.keys) : tg;
        if (out) {
            uint4 y = x[v];
            if (sg.vals) {
                if (valid[v] == FULL) {
                    y = __ldcs(vv + vi);
                } else {
#pragma unroll
                    for (int q = 0; q < VE; q++)
                        if ((valid[v] >> q) & 1) set_elem<U>(y, q, (Key)vs[s0 + q]);
                }
            }
            y = zero_dropped<U>(y, dr);
            if (valid[v] == FULL) {
                __stcs(ov + vi, y);
            } else {
#pragma unroll
                for (int q = 0; q < VE; q++)
                    if ((valid[v] >> q) & 1) os[s0 + q] = (U)elem<U>(y, q);
            }
        }
        if (mask && dr) atomicOr(&bits[(s0 + a32) / 32], dr << ((s0 + a32) & 31));
    }
    // 5. The row's mask words.
    if (mask) {
        __syncthreads();
        flush_mask<T>(mask, bits, nwords, (gv0 * VE) / 32, e0, n);
    }
}

// Tiny rows (n <= TD_TINY_ROW): tiles of T rows (T * n contiguous elements) per block, a grid
// that loops over the tiles. The tile is read once by 16-byte vectors into shared memory;
// thread t ranks row t there (rank of element j: the elements before it with a key <= its
// key plus those after it with a key < its key, i.e. its place in (key, index) order),
// keeping a 32-bit targeted mask per row; the tile is written back by 16-byte vectors from
// shared memory, one Philox block per group of four draws with a targeted element.
// Traffic: one read, one write (and n / 8 bytes of mask when asked).
template <typename U, int T>
__device__ __forceinline__ void td_tiny(const TdTinyParams& p) {
    typedef typename Ty<U>::Key Key;
    constexpr int VE = Ty<U>::VE;
    constexpr Key KMASK = (Key)Bits<U>::MASK;
    constexpr uint32_t FULL = (1u << VE) - 1;
    constexpr uint32_t SLOTS = T * TD_TINY_ROW + VE;  // a tile may start mid-vector
    static_assert(T * TD_TINY_ROW <= 8192, "the 20-bit reciprocal below divides exactly below 8192");
    __shared__ __align__(16) U tile[SLOTS];
    __shared__ uint32_t targeted[T];
    __shared__ uint32_t staged[T * TD_TINY_ROW / 32 + 2];
    const TdSeg& sg = p.seg;
    const int tid = threadIdx.x;
    const uint32_t n = sg.n, k = sg.k, thr = sg.threshold;
    const U* w = reinterpret_cast<const U*>(sg.w);
    const U* vals = reinterpret_cast<const U*>(sg.vals);
    U* out = reinterpret_cast<U*>(sg.out);
    uint32_t* mask = reinterpret_cast<uint32_t*>(sg.bits);
    const bool draws = thr != 0 && thr != (uint32_t)TD_ALWAYS;
    // Targeted flags of a row of n: all of them at k = n, none without a selection.
    const uint32_t all = n >= 32 ? 0xffffffffu : (1u << n) - 1;
    const bool select = k > 0 && k < n && thr != 0;
    const uint32_t fixed_tm = (k >= n && k > 0 && thr != 0) ? all : 0u;
    // l / n for l < 8192 and n <= 32: exact with a 20-bit reciprocal.
    const uint32_t magic = ((1u << 20) + n - 1) / n;
    for (uint64_t r0 = (uint64_t)blockIdx.x * T; r0 < p.rows; r0 += (uint64_t)gridDim.x * T) {
        const uint32_t nrows = (uint32_t)min((uint64_t)T, p.rows - r0);
        const uint32_t cnt = nrows * n;
        const uint64_t e0 = r0 * n;                      // flat index of the tile's element 0
        const uint64_t gv0 = e0 / VE;                    // its vector
        const uint32_t off = (uint32_t)(e0 - gv0 * VE);  // its slot
        const uint32_t nv = (off + cnt + VE - 1) / VE;   // vectors of the tile
        const uint4* wv = reinterpret_cast<const uint4*>(w + gv0 * VE);
        const U* ws = w + gv0 * VE;
        // 1. Load the tile.
        for (uint32_t v = tid; v < nv; v += T) {  // hot-loop: tiny load, VE
            const uint32_t s0 = v * VE;
            if (s0 >= off && s0 + VE <= off + cnt) {
                *reinterpret_cast<uint4*>(tile + s0) = __ldcs(wv + v);
            } else {
#pragma unroll
                for (int q = 0; q < VE; q++)
                    if (s0 + q >= off && s0 + q < off + cnt) tile[s0 + q] = ws[s0 + q];
            }
        }
        const uint32_t a32 = (uint32_t)((gv0 * VE) & 31);  // bit of slot 0 in its mask word
        const uint32_t nwords = (a32 + off + cnt - 1) / 32 + 1;
        if (mask)
            for (uint32_t i = tid; i < nwords; i += T) staged[i] = 0;
        __syncthreads();
        // 2. Rank each row.
        if (tid < (int)nrows) {
            uint32_t tm = fixed_tm;
            if (select) {
                const U* rs = tile + off + tid * n;
                for (uint32_t j = 0; j < n; j++) {
                    const Key kj = (Key)rs[j] & KMASK;
                    uint32_t rank = 0;
                    for (uint32_t i = 0; i < j; i++) rank += ((Key)rs[i] & KMASK) <= kj;  // hot-loop: rank, 1/n
                    for (uint32_t i = j + 1; i < n; i++) rank += ((Key)rs[i] & KMASK) < kj;
                    tm |= (uint32_t)(rank < k) << j;
                }
            }
            targeted[tid] = tm;
        }
        __syncthreads();
        // 3. Output by vectors from the tile.
        const uint64_t draw_slot0 = sg.elem_base + gv0 * VE;
        const uint4* vv = reinterpret_cast<const uint4*>(vals + gv0 * VE);
        uint4* ov = reinterpret_cast<uint4*>(out + gv0 * VE);
        for (uint32_t v = tid; v < nv; v += T) {  // hot-loop: tiny output, VE
            const uint32_t s0 = v * VE;
            uint32_t valid = 0, tg = 0;
#pragma unroll
            for (int q = 0; q < VE; q++) {
                const uint32_t s = s0 + q;
                if (s >= off && s < off + cnt) {
                    const uint32_t l = s - off, r = (l * magic) >> 20, c = l - r * n;
                    valid |= 1u << q;
                    tg |= ((targeted[r] >> c) & 1u) << q;
                }
            }
            const uint32_t sh = (uint32_t)((VE >= 4 ? draw_slot0 : draw_slot0 + s0) & 3);
            const uint32_t dr = draws && tg ? dropped_of<VE>(tg, draw_slot0 + s0, sh, thr, sg.offset, p.keys) : tg;
            if (out) {
                if (valid == FULL) {
                    const uint4 x = vals ? __ldcs(vv + v) : *reinterpret_cast<const uint4*>(tile + s0);
                    __stcs(ov + v, zero_dropped<U>(x, dr));
                } else {
#pragma unroll
                    for (int q = 0; q < VE; q++)
                        if ((valid >> q) & 1) {
                            const U x = vals ? vals[gv0 * VE + s0 + q] : tile[s0 + q];
                            out[gv0 * VE + s0 + q] = ((dr >> q) & 1) ? (U)0 : x;
                        }
                }
            }
            if (mask && dr) atomicOr(&staged[(s0 + a32) / 32], dr << ((s0 + a32) & 31));
        }
        if (mask) {
            __syncthreads();
            flush_mask<T>(mask, staged, nwords, (gv0 * VE) / 32, e0, cnt);
        }
        __syncthreads();
    }
}

// Backward: out[e] = bit e of the mask ? +0 : g[e], e < numel. g and out 16-byte aligned.
template <typename U>
__device__ __forceinline__ void td_bwd(const U* g, U* out, const uint32_t* mask, const TdBwdParams& p) {
    constexpr int VE = Ty<U>::VE;
    constexpr uint32_t FULL = (1u << VE) - 1;
    const uint64_t numel = p.numel, nvec = numel / VE;
    const uint4* gv = reinterpret_cast<const uint4*>(g);
    uint4* ov = reinterpret_cast<uint4*>(out);
    for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nvec;
         v += (uint64_t)gridDim.x * blockDim.x) {  // hot-loop: backward, VE
        const uint4 x = __ldcs(gv + v);
        const uint32_t d = (__ldg(mask + (v * VE) / 32) >> ((v * VE) & 31)) & FULL;
        __stcs(ov + v, d ? zero_dropped<U>(x, d) : x);
    }
    // The last numel % VE elements.
    if (blockIdx.x == 0 && threadIdx.x < numel - nvec * VE) {
        const uint64_t e = nvec * VE + threadIdx.x;
        out[e] = ((mask[e / 32] >> (e & 31)) & 1) ? (U)0 : g[e];
    }
}

// Pack and unpack of the dropped elements' original values (what `VarMapDropout` holds on
// a device between `apply` and `finish`): chunks of TD_PACK_CHUNK = 32 * TD_BLOCK elements,
// a block per chunk (grid-stride), a mask word per thread. The values of chunk c start at
// offsets[c] (the host's exclusive scan of td_pack_count's counts), in element order.
// The bits of the word at element e0 that belong to the tensor (none past numel).
__device__ __forceinline__ uint32_t word_in(const uint32_t* bits, uint64_t word, uint64_t numel) {
    const uint64_t e0 = word * 32;
    if (e0 >= numel) return 0;
    const uint32_t b = bits[word];
    return numel - e0 >= 32 ? b : b & ((1u << (numel - e0)) - 1u);
}

// counts[c] = the set bits of chunk c.
__device__ __forceinline__ void td_pack_count(const uint32_t* bits, uint32_t* counts, const TdPackParams& p) {
    __shared__ uint32_t warp_tot[TD_BLOCK / 32];
    for (uint64_t c = blockIdx.x; c < p.chunks; c += gridDim.x) {
        const uint32_t x = __popc(word_in(bits, c * TD_BLOCK + threadIdx.x, p.numel));
        const uint32_t ex = block_excl_scan<TD_BLOCK>(x, warp_tot);
        if (threadIdx.x == TD_BLOCK - 1) counts[c] = ex + x;
        __syncthreads();
    }
}

// values[offsets[c] + j] = w[e] for the j-th set bit e of chunk c (pack), or out[e] =
// values[...] for it (unpack: out holds the dropped weight already, only the dropped
// elements are written).
template <typename U, bool PACK>
__device__ __forceinline__ void td_pack(const U* w, const uint32_t* bits, const uint64_t* offsets, U* values,
                                        U* out, const TdPackParams& p) {
    __shared__ uint32_t warp_tot[TD_BLOCK / 32];
    for (uint64_t c = blockIdx.x; c < p.chunks; c += gridDim.x) {
        const uint64_t word = c * TD_BLOCK + threadIdx.x;
        uint32_t b = word_in(bits, word, p.numel);
        uint64_t at = offsets[c] + block_excl_scan<TD_BLOCK>(__popc(b), warp_tot);
        while (b) {  // hot-loop: pack, 1
            const uint64_t e = word * 32 + (uint64_t)(__ffs((int)b) - 1);
            if (PACK) values[at] = w[e];
            else out[e] = values[at];
            at++;
            b &= b - 1;
        }
        __syncthreads();
    }
}

// The u8 mask of `targeted_dropout_mask` from the bit mask: mask[e] = bit e, e < numel. One
// thread per 32-bit word of the mask, two 16-byte stores; mask 16-byte aligned.
__device__ __forceinline__ void td_mask_u8(const uint32_t* bits, uint8_t* mask, const TdBwdParams& p) {
    const uint64_t numel = p.numel, words = numel / 32;
    uint4* mv = reinterpret_cast<uint4*>(mask);
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < words;
         w += (uint64_t)gridDim.x * blockDim.x) {  // hot-loop: mask bytes, 32
        const uint32_t b = __ldcs(bits + w);
        uint32_t o[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const uint32_t x = (b >> (4 * j)) & 15u;  // four flags, one per byte
            o[j] = (x & 1u) | ((x & 2u) << 7) | ((x & 4u) << 14) | ((x & 8u) << 21);
        }
        __stcs(mv + 2 * w, make_uint4(o[0], o[1], o[2], o[3]));
        __stcs(mv + 2 * w + 1, make_uint4(o[4], o[5], o[6], o[7]));
    }
    // The last numel % 32 flags.
    if (blockIdx.x == 0 && threadIdx.x < numel - words * 32) {
        const uint64_t e = words * 32 + threadIdx.x;
        mask[e] = (uint8_t)((bits[e / 32] >> (e & 31)) & 1u);
    }
}

}  // namespace sel

// ---------------------------------------------------------------------------------------
// Long rows (more elements than a td_block of TD_MAX_THREADS holds): many blocks per
// row. The composite of an element is (key << 32 | local index): unique within the row and
// ordered as (key, flat index), CW = key bits + 32 bits wide; the targeted elements are those
// whose composite is below the composite of the rank-k element, the cut.
//
// Passes over the row (each a read of the whole row; everything else reads a few KB per row):
// 1. td_long_count pass 0: the first 11-bit digit of every composite (the key's top 11
//    bits), counted per tile in shared memory and added into the row's global histogram.
// 2. td_long_count pass 1: every block picks the bin that holds rank k from that
//    histogram (the same pick in every block of the row, the chunk-0 block records it in the
//    row's state). If the bin holds at most `cap` composites (cap = n / 16 rounded up to a
//    power of two, 4096 .. 65536), the pass compacts them (warp-aggregated appends) into
//    the row's candidate list; otherwise it counts the next 11-bit digit of the bin's
//    composites, and pass 2 picks again, and so on: a pass that finds its row's candidates
//    already compacted exits without reading the row. The host launches the passes that
//    the worst case needs (after pass j the bin holds at most 2^(CW - 11 j) composites; the
//    last pass always compacts), so the plan is fixed and nothing is read back to the host.
//    Rows whose boundary bin of the first digit holds more than cap composites (heavy ties,
//    e.g. an all-zero row, or rows past about 2^20 elements with a crowded bin) take one
//    more pass per further digit.
// 3. td_long_resolve (one block per row, no pass over the row): 11-bit digits over the
//    row's candidate list (L2) until at most 32 are left, then one warp ranks them; the
//    composite of rank k is the cut, in the row's state.
// 4. td_long_apply (the last pass): targeted iff composite < cut; draws, output and bit
//    mask as td_block's step 4, tile by tile, every 16-byte vector read once and written
//    once (the row's partial first and last vector element by element).
// Traffic in the common case: three reads of the row (count, candidates, apply) and one
// write, against v4's five reads (four histogram passes for f32 and the apply).
// State of a row, [rows][passes] records of TD_LONG_STATE_BYTES: slot 0 holds the
// candidate counter (cnt) and, after resolve, the cut (lo, hi); slot j >= 1 the selection
// after pass j's pick.

namespace sel {

constexpr int LT = TD_LONG_THREADS;
constexpr int LNV = TD_LONG_NV;
constexpr uint32_t LCV = LT * LNV;  // vectors per tile
static_assert(NBINS == TD_RADIX_BINS, "one digit: TD_RADIX_BINS bins");
static_assert(LT % 32 == 0 && LT <= 1024, "whole warps");

struct LongRow {
    uint64_t lo, hi;  // slot 0: the cut; slots >= 1: the prefix (composite's top `fixed` bits)
    uint32_t fixed;   // bits of the composite that the prefix fixes
    uint32_t r;       // the rank sought among the composites under the prefix
    uint32_t cnt;     // composites under the prefix (slot 0: candidates compacted)
    uint32_t done;    // the candidates under the prefix are compacted: no more digits
};
static_assert(sizeof(LongRow) == TD_LONG_STATE_BYTES, "the host sizes the state by TD_LONG_STATE_BYTES");

__device__ __forceinline__ uint64_t hi64(uint64_t) { return 0; }
__device__ __forceinline__ uint64_t hi64(unsigned __int128 c) { return (uint64_t)(c >> 64); }
__device__ __forceinline__ void comp_set(uint64_t& c, uint64_t lo, uint64_t) { c = lo; }
__device__ __forceinline__ void comp_set(unsigned __int128& c, uint64_t lo, uint64_t hi) {
    c = ((unsigned __int128)hi << 64) | lo;
}

// The contiguous range of the rows * chunks tiles that this block takes.
__device__ __forceinline__ void tile_range(uint64_t tiles, uint64_t& t0, uint64_t& t1) {
    const uint64_t g = gridDim.x, b = blockIdx.x, per = tiles / g, rem = tiles % g;
    t0 = b * per + (b < rem ? b : rem);
    t1 = t0 + per + (b < rem ? 1 : 0);
}

// Where row `row` lies: its first vector gv0 (flat), the slot of its element 0 in it, and
// the vectors that hold its elements. Slot s of the row is flat index gv0 * VE + s, local
// index s - off.
template <int VE> struct RowAt {
    uint64_t gv0, nvr;
    uint32_t off;
    __device__ __forceinline__ RowAt(uint64_t row, uint32_t n) {
        const uint64_t e0 = row * n;
        gv0 = e0 / VE;
        off = (uint32_t)(e0 - gv0 * VE);
        nvr = (off + (uint64_t)n + VE - 1) / VE;
    }
};

// Loads row vector vi into x; valid has a bit per element of the row.
template <typename U>
__device__ __forceinline__ void load_vec(const U* w, const RowAt<Ty<U>::VE>& ra, uint32_t n, uint64_t vi, uint4& x,
                                         uint32_t& valid) {
    constexpr int VE = Ty<U>::VE;
    constexpr uint32_t FULL = (1u << VE) - 1;
    const uint64_t end = ra.off + (uint64_t)n, s0 = vi * VE;
    x = make_uint4(0, 0, 0, 0);
    valid = 0;
    if (vi < ra.nvr) {
        if (s0 >= ra.off && s0 + VE <= end) {
            x = __ldcs(reinterpret_cast<const uint4*>(w + ra.gv0 * VE) + vi);
            valid = FULL;
        } else {
            const U* ws = w + ra.gv0 * VE;
#pragma unroll
            for (int q = 0; q < VE; q++)
                if (s0 + q >= ra.off && s0 + q < end) {
                    set_elem<U>(x, q, (typename Ty<U>::Key)ws[s0 + q]);
                    valid |= 1u << q;
                }
        }
    }
}

// Loads tile c of a row: vector v of this thread is row vector c * LCV + v * LT + tid.
template <typename U>
__device__ __forceinline__ void load_tile(const U* w, const RowAt<Ty<U>::VE>& ra, uint32_t n, uint64_t c,
                                          uint4 (&x)[LNV], uint32_t (&valid)[LNV]) {
#pragma unroll
    for (int v = 0; v < LNV; v++) load_vec<U>(w, ra, n, c * LCV + v * LT + threadIdx.x, x[v], valid[v]);
}

// Pass `pass` of the selection over rows of n (see above). hist: [rows][passes - 1][TD_RADIX_BINS]
// counts (zeroed before pass 0); state: [rows][passes] LongRow (zeroed before pass 0); cand:
// [rows][cap] composites.
template <typename U>
__device__ __forceinline__ void td_long_count(uint32_t* hist, LongRow* state, typename Ty<U>::Comp* cand,
                                                const TdLongParams& p) {
    typedef typename Ty<U>::Comp Comp;
    constexpr int VE = Ty<U>::VE, KB = Ty<U>::KB, CW = KB + 32;
    __shared__ Smem<LT> sm;
    __shared__ LongRow cur;  // the selection this block continues in its current row
    const int tid = threadIdx.x, lane = tid & 31;
    const TdSeg& sg = p.seg;
    const uint32_t n = sg.n, P = p.passes, j = p.pass, cap = p.cap;
    const U* w = reinterpret_cast<const U*>(sg.w);
    uint64_t t0, t1;
    tile_range(p.rows * p.chunks, t0, t1);
    uint64_t row_cur = ~0ull;
    int mode = 0;  // 0: nothing left in this row, 1: count the next digit, 2: compact
    for (uint64_t t = t0; t < t1; t++) {
        const uint64_t row = t / p.chunks, c = t - row * p.chunks;
        if (row != row_cur) {
            if (mode == 1) {
                // The previous row's counts into its global histogram.
                __syncthreads();
                uint32_t* g = hist + (row_cur * (P - 1) + j) * NBINS;
                for (int i = tid; i < NBINS; i += LT)
                    if (sm.hist[i]) atomicAdd(&g[i], sm.hist[i]);
            }
            __syncthreads();
            row_cur = row;
            if (j == 0) {
                if (tid == 0) cur = LongRow{0, 0, 0, sg.k, n, 0};
                mode = 1;
            } else {
                const LongRow prev = j == 1 ? LongRow{0, 0, 0, sg.k, n, 0} : state[row * P + j - 1];
                if (prev.done) {
                    if (tid == 0) cur = prev;
                    mode = 0;
                } else {
                    const uint32_t* g = hist + (row * (P - 1) + j - 1) * NBINS;
                    for (int i = tid; i < NBINS; i += LT) sm.hist[i] = g[i];
                    __syncthreads();
                    pick<LT, NBINS>(sm.hist, prev.r, sm);
                    const int D = min(RADIX_BITS, CW - (int)prev.fixed);
                    Comp pre;
                    comp_set(pre, prev.lo, prev.hi);
                    pre = (pre << D) | (Comp)sm.sel[0];
                    const uint32_t cnt = sm.sel[2];
                    const bool done = cnt <= cap || j + 1 == P;
                    mode = done ? 2 : 1;
                    if (tid == 0) cur = LongRow{(uint64_t)pre, hi64(pre), prev.fixed + D, sm.sel[1], cnt, done};
                }
            }
            __syncthreads();
            if (c == 0 && tid == 0 && j > 0) state[row * P + j] = cur;
            if (mode == 1)
                for (int i = tid; i < NBINS / 4; i += LT) reinterpret_cast<uint4*>(sm.hist)[i] = make_uint4(0, 0, 0, 0);
            __syncthreads();
        }
        if (mode == 0) continue;
        const RowAt<VE> ra(row, n);
        const int fixed = (int)cur.fixed;
        Comp prefix;
        comp_set(prefix, cur.lo, cur.hi);
        if (mode == 1) {
            // Four vectors in flight, not the whole tile (holding it spilled on sm_90 for u16).
            const int D = min(RADIX_BITS, CW - fixed);
#pragma unroll 4
            for (int v = 0; v < LNV; v++) {
                const uint64_t vi = c * LCV + v * LT + tid, s0 = vi * VE;
                uint4 xv;
                uint32_t valid;
                load_vec<U>(w, ra, n, vi, xv, valid);
#pragma unroll
                for (int q = 0; q < VE; q++) {
                    if (!((valid >> q) & 1)) continue;
                    const Comp cp = ((Comp)key_of<U>(xv, q) << 32) | (uint32_t)(s0 + q - ra.off);
                    if (fixed == 0 || (cp >> (CW - fixed)) == prefix)
                        atomicAdd(&sm.hist[(uint32_t)(cp >> (CW - fixed - D)) & ((1u << D) - 1)], 1u);
                }
            }
        } else {
            uint4 x[LNV];
            uint32_t valid[LNV];
            load_tile<U>(w, ra, n, c, x, valid);
            // Compact the composites under the prefix: one append per warp and vector.
            Comp* cr = cand + row * cap;
#pragma unroll
            for (int v = 0; v < LNV; v++) {
                const uint64_t s0 = (c * LCV + v * LT + tid) * VE;
                uint32_t hm = 0;
#pragma unroll
                for (int q = 0; q < VE; q++) {
                    const Comp cp = ((Comp)key_of<U>(x[v], q) << 32) | (uint32_t)(s0 + q - ra.off);
                    hm |= (uint32_t)(((valid[v] >> q) & 1) && (cp >> (CW - fixed)) == prefix) << q;
                }
                const uint32_t h = __popc(hm);
                if (__any_sync(0xffffffffu, h != 0)) {
                    uint32_t incl = h;
#pragma unroll
                    for (int o = 1; o < 32; o <<= 1) {
                        const uint32_t y = __shfl_up_sync(0xffffffffu, incl, o);
                        if (lane >= o) incl += y;
                    }
                    uint32_t base = 0;
                    if (lane == 31) base = atomicAdd(&state[row * P].cnt, incl);
                    base = __shfl_sync(0xffffffffu, base, 31);
                    uint32_t at = base + incl - h;
#pragma unroll
                    for (int q = 0; q < VE; q++)
                        if ((hm >> q) & 1) {
                            // at < cap always (the bin holds at most cap); the test keeps a
                            // broken invariant inside the buffer.
                            if (at < cap) cr[at] = ((Comp)key_of<U>(x[v], q) << 32) | (uint32_t)(s0 + q - ra.off);
                            at++;
                        }
                }
            }
        }
    }
    if (mode == 1) {
        __syncthreads();
        uint32_t* g = hist + (row_cur * (P - 1) + j) * NBINS;
        for (int i = tid; i < NBINS; i += LT)
            if (sm.hist[i]) atomicAdd(&g[i], sm.hist[i]);
    }
}

// One block per row: the rank sought among the row's compacted candidates, as the cut.
// state, cand: as td_long_count's.
template <typename U>
__device__ __forceinline__ void td_long_resolve(LongRow* state, const typename Ty<U>::Comp* cand,
                                                  const TdLongParams& p) {
    typedef typename Ty<U>::Comp Comp;
    constexpr int CW = Ty<U>::KB + 32;
    __shared__ Smem<LT> sm;
    __shared__ Comp small[TD_WARP_RANK];
    const int tid = threadIdx.x;
    const uint64_t row = blockIdx.x;
    const uint32_t P = p.passes;
    const LongRow s = state[row * P + P - 1];
    const uint32_t m = min(s.cnt, p.cap);
    const Comp* cr = cand + row * p.cap;
    Comp prefix;
    comp_set(prefix, s.lo, s.hi);
    int fixed = (int)s.fixed;
    uint32_t r = s.r, cnt = s.cnt;
    while (cnt > TD_WARP_RANK) {
        const int D = min(RADIX_BITS, CW - fixed);
        for (int i = tid; i < NBINS / 4; i += LT) reinterpret_cast<uint4*>(sm.hist)[i] = make_uint4(0, 0, 0, 0);
        __syncthreads();
        for (uint32_t i = tid; i < m; i += LT) {
            const Comp c = cr[i];
            if ((c >> (CW - fixed)) == prefix) atomicAdd(&sm.hist[(uint32_t)(c >> (CW - fixed - D)) & ((1u << D) - 1)], 1u);
        }
        __syncthreads();
        pick<LT, NBINS>(sm.hist, r, sm);
        prefix = (prefix << D) | (Comp)sm.sel[0];
        fixed += D;
        r = sm.sel[1];
        cnt = sm.sel[2];
    }
    if (tid < 32) {
        Comp mine;
        if (warp_pick<CW>(cr, m, prefix, fixed, cnt, r, small, mine)) {
            state[row * P].lo = (uint64_t)mine;
            state[row * P].hi = hi64(mine);
            state[row * P].done = 1;
        }
    }
}

// The output pass over every tile. state: as td_long_count's (only slot 0's cut is read,
// and nothing at seg.k = seg.n).
template <typename U>
__device__ __forceinline__ void td_long_apply(const LongRow* state, const TdLongParams& p) {
    typedef typename Ty<U>::Key Key;
    constexpr int VE = Ty<U>::VE;
    constexpr uint32_t FULL = (1u << VE) - 1;
    constexpr uint32_t WORDS = LCV * VE / 32 + 2;  // mask words a tile touches at most
    __shared__ uint32_t staged[WORDS];
    const int tid = threadIdx.x;
    const TdSeg& sg = p.seg;
    const uint32_t n = sg.n, thr = sg.threshold, P = p.passes;
    const U* w = reinterpret_cast<const U*>(sg.w);
    const U* vals = reinterpret_cast<const U*>(sg.vals);
    U* out = reinterpret_cast<U*>(sg.out);
    uint32_t* mask = reinterpret_cast<uint32_t*>(sg.bits);
    const bool all = sg.k >= n;  // everything targeted (no selection ran)
    const bool draws = thr != 0 && thr != (uint32_t)TD_ALWAYS;
    uint64_t t0, t1;
    tile_range(p.rows * p.chunks, t0, t1);
    for (uint64_t t = t0; t < t1; t++) {
        const uint64_t row = t / p.chunks, c = t - row * p.chunks;
        const RowAt<VE> ra(row, n);
        if (c * LCV >= ra.nvr) continue;  // past this row's vectors (block-uniform)
        // targeted iff key < ck || (key == ck && local index < ci)
        Key ck = 0;
        uint32_t ci = 0;
        if (!all) {
            const LongRow& s = state[row * P];
            ck = (Key)((s.lo >> 32) | (s.hi << 32));
            ci = (uint32_t)s.lo;
        }
        uint4 x[LNV];
        uint32_t valid[LNV];
        load_tile<U>(w, ra, n, c, x, valid);
        const uint64_t ts0 = c * LCV * VE;                 // the tile's first slot
        const uint64_t fb = ra.gv0 * VE + ts0;              // its flat index
        const uint32_t a32 = (uint32_t)(fb & 31);          // its bit in its mask word
        const uint64_t lo = max(ts0, (uint64_t)ra.off);
        const uint64_t hi = min(ts0 + LCV * VE, ra.off + (uint64_t)n);
        const uint32_t nwords = (uint32_t)((a32 + (hi - 1 - ts0)) / 32 + 1);
        if (mask) {
            for (uint32_t i = tid; i < nwords; i += LT) staged[i] = 0;
            __syncthreads();
        }
        const uint64_t draw_slot0 = sg.elem_base + ra.gv0 * VE;
        const uint4* vv = reinterpret_cast<const uint4*>(vals + ra.gv0 * VE);
        const U* vs = vals + ra.gv0 * VE;
        uint4* ov = reinterpret_cast<uint4*>(out + ra.gv0 * VE);
        U* os = out + ra.gv0 * VE;
#pragma unroll
        for (int v = 0; v < LNV; v++) {
            if (!valid[v]) continue;
            const uint64_t vi = c * LCV + v * LT + tid, s0 = vi * VE;
            uint32_t tg = 0;
            if (all) {
                tg = valid[v];
            } else {
#pragma unroll
                for (int q = 0; q < VE; q++) {
                    const Key key = key_of<U>(x[v], q);
                    const uint32_t li = (uint32_t)(s0 + q - ra.off);
                    tg |= (uint32_t)(key < ck || (key == ck && li < ci)) << q;
                }
                tg &= valid[v];
            }
            const uint32_t sh = (uint32_t)((VE >= 4 ? draw_slot0 : draw_slot0 + s0) & 3);
            const uint32_t dr = draws && tg ? dropped_of<VE>(tg, draw_slot0 + s0, sh, thr, sg.offset, p.keys) : tg;
            if (out) {
                uint4 y = x[v];
                if (vals) {
                    if (valid[v] == FULL) {
                        y = __ldcs(vv + vi);
                    } else {
#pragma unroll
                        for (int q = 0; q < VE; q++)
                            if ((valid[v] >> q) & 1) set_elem<U>(y, q, (Key)vs[s0 + q]);
                    }
                }
                y = zero_dropped<U>(y, dr);
                if (valid[v] == FULL) {
                    __stcs(ov + vi, y);
                } else {
#pragma unroll
                    for (int q = 0; q < VE; q++)
                        if ((valid[v] >> q) & 1) os[s0 + q] = (U)elem<U>(y, q);
                }
            }
            if (mask && dr) {
                const uint32_t b = (uint32_t)(s0 - ts0) + a32;
                atomicOr(&staged[b / 32], dr << (b & 31));
            }
        }
        if (mask) {
            __syncthreads();
            flush_mask<LT>(mask, staged, nwords, fb / 32, ra.gv0 * VE + lo, hi - lo);
            __syncthreads();
        }
    }
}

}  // namespace sel

// ---------------------------------------------------------------------------------------
// extern "C" entry points: the block path per width and block size, the backward per width.
// Registers: __launch_bounds__(T, 1024 / T) asks for full occupancy in threads (64 registers);
// T = 64 asks for 12 blocks, the most that its shared memory allows; T = 128 asks for 7 (73
// registers): 8 (64) made the u32 kernel spill 8 bytes.

#define TD_SEL_BLOCK(NAME, U, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(T, T == 64 ? 12 : T == 128 ? 7 : 1024 / T)  \
        td_block_##NAME##_t##T(const TdBlockParams p) {                                         \
        sel::td_block<U, T>(p);                                                              \
    }
#define TD_SEL_TINY(NAME, U, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(T) td_tiny_##NAME##_t##T(const TdTinyParams p) { \
        sel::td_tiny<U, T>(p);                                                               \
    }
#define TD_SEL_WIDTH(NAME, U)                                                                    \
    TD_SEL_BLOCK(NAME, U, 64)                                                                   \
    TD_SEL_BLOCK(NAME, U, 128)                                                                  \
    TD_SEL_BLOCK(NAME, U, 256)                                                                  \
    TD_SEL_BLOCK(NAME, U, 512)                                                                  \
    TD_SEL_BLOCK(NAME, U, 1024)                                                                 \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK)                                    \
        td_bwd_##NAME(const U* g, U* out, const uint32_t* mask, const TdBwdParams p) {      \
        sel::td_bwd<U>(g, out, mask, p);                                                      \
    }

TD_SEL_WIDTH(u16, uint16_t)
TD_SEL_WIDTH(u32, uint32_t)
TD_SEL_WIDTH(u64, uint64_t)
extern "C" __global__ void __launch_bounds__(TD_BLOCK) td_pack_count(const uint32_t* bits, uint32_t* counts,
                                                                     const TdPackParams p) {
    sel::td_pack_count(bits, counts, p);
}
#define TD_SEL_PACK(NAME, U)                                                                        \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK)                                          \
        td_pack_##NAME(const U* w, const uint32_t* bits, const uint64_t* offsets, U* values, const TdPackParams p) { \
        sel::td_pack<U, true>(w, bits, offsets, values, nullptr, p);                                \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(TD_BLOCK)                                          \
        td_unpack_##NAME(const uint32_t* bits, const uint64_t* offsets, const U* values, U* out, const TdPackParams p) { \
        sel::td_pack<U, false>(nullptr, bits, offsets, const_cast<U*>(values), out, p);            \
    }
TD_SEL_PACK(u16, uint16_t)
TD_SEL_PACK(u32, uint32_t)
TD_SEL_PACK(u64, uint64_t)
extern "C" __global__ void __launch_bounds__(TD_BLOCK) td_mask_u8(const uint32_t* bits, uint8_t* mask,
                                                                  const TdBwdParams p) {
    sel::td_mask_u8(bits, mask, p);
}
// Tiles of 256 rows (16 and 32 KB of shared memory), 128 for u64 (32 KB).
TD_SEL_TINY(u16, uint16_t, 256)
TD_SEL_TINY(u32, uint32_t, 256)
TD_SEL_TINY(u64, uint64_t, 128)
// Long rows: the count / candidate passes, the resolve, the output pass (see above).
#define TD_SEL_LONG(NAME, U)                                                                     \
    extern "C" __global__ void __launch_bounds__(TD_LONG_THREADS, 1) td_long_count_##NAME(    \
        uint32_t* hist /* [rows][passes - 1][TD_RADIX_BINS] */,                                    \
        sel::LongRow* state /* [rows][passes] */, sel::Ty<U>::Comp* cand /* [rows][cap] */,     \
        const TdLongParams p) {                                                              \
        sel::td_long_count<U>(hist, state, cand, p);                                         \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(TD_LONG_THREADS) td_long_resolve_##NAME(  \
        sel::LongRow* state /* [rows][passes] */, const sel::Ty<U>::Comp* cand /* [rows][cap] */, \
        const TdLongParams p) {                                                              \
        sel::td_long_resolve<U>(state, cand, p);                                             \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(TD_LONG_THREADS) td_long_apply_##NAME(    \
        const sel::LongRow* state /* [rows][passes] */, const TdLongParams p) {               \
        sel::td_long_apply<U>(state, p);                                                     \
    }

TD_SEL_LONG(u16, uint16_t)
TD_SEL_LONG(u32, uint32_t)
TD_SEL_LONG(u64, uint64_t)
