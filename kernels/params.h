/* Launch parameters of every kernel of this crate, and the constants that the host and the
 * kernels share. Plain C: the kernels include it, and `src/cuda_params.rs` is generated from
 * it by bindgen (scripts/bindgen.sh; CI regenerates it and fails on any difference).
 *
 * Each kernel takes its device buffers as separate pointer arguments (so that the host side
 * tracks reads and writes per buffer) followed by one of these structs, by value. Every field
 * is 8 or 4 bytes and every struct is padded by hand to a multiple of 8 bytes: no implicit
 * padding, so the host can pass the bytes as they are.
 *
 * Positions and counts are 64-bit. A selection row (the weight kernels) holds at most
 * TD_MAX_ROW elements: ranks and histogram counts within a row are 32-bit in the kernels, and
 * the host returns an error for longer rows before any launch. */
#ifndef TD_PARAMS_H
#define TD_PARAMS_H

#include <stdint.h>

/* Threads per block of the element-wise kernels (td_bwd, td_mask_u8, the unit kernels,
 * td_nm); the selection kernels take theirs below. */
#define TD_BLOCK 256
/* Rows of at most this many elements go to the tile kernel (td_tiny, a thread per row). */
#define TD_TINY_ROW 32
/* The radix select of the selection kernels: digits of TD_RADIX_BITS bits (TD_RADIX_BINS
 * bins, one shared histogram) over the keys and composites, then passes of
 * TD_CAND_RADIX_BITS bits over the few compacted candidates until at most TD_WARP_RANK are
 * left, which one warp ranks by shuffles. The CPU select (src/select/row.rs) takes the same
 * first digit. */
#define TD_RADIX_BITS 11
#define TD_RADIX_BINS 2048
#define TD_CAND_RADIX_BITS 8
#define TD_CAND_RADIX_BINS 256
#define TD_WARP_RANK 32
/* Lanes of the unit scores' reduction (DESIGN.md, "Targeted unit dropout": lane j sums the
 * squares of x[j + TD_UNIT_LANES m], then the lanes fold pairwise); the CPU path
 * (src/cpu/unit.rs, SCORE_LANES) sums in the same lanes. */
#define TD_UNIT_LANES 1024
/* The threshold that drops every targeted element with no draw (alpha = 1): 2^24. */
#define TD_ALWAYS 16777216
/* The longest selection row, 2^32 - 1 elements. */
#define TD_MAX_ROW 4294967295

/* The Bernoulli draws of one call (DESIGN.md, "Random draws"): element with draw index e is
 * dropped when (word e % 4 of Philox4x32-10 at counter [e / 4, offset], key seed) >> 8 is
 * below threshold. */
typedef struct TdDraws {
    uint64_t seed;
    uint64_t offset;
    uint32_t threshold;
    uint32_t pad0;
} TdDraws;

/* td_unit_scores_block_* and td_unit_scores_tiny_*: the squared L2 norm of each of `units` rows
 * of n elements.
 *
 * Preconditions: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block; units >= 1,
 * n >= 1; unit_scores_tiny: n <= TD_TINY_ROW (one thread holds the 32 lanes of a unit);
 * scores holds `units` accumulators (f32, or f64 for f64 input). */
typedef struct UnitScoresParams {
    uint64_t units;
    uint64_t n;
} UnitScoresParams;

/* td_unit_apply_*: numel elements in units of n, each unit dropped as a whole by its flag.
 *
 * Preconditions: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block; n >= 1 and
 * numel a multiple of n; ubits holds the bit mask of the numel / n units (bit u % 32 of
 * word u / 32); vals non-null, out and mask may be null. */
typedef struct UnitApplyParams {
    uint64_t numel;
    uint64_t n;
} UnitApplyParams;

/* td_nm_*: N:M targeted dropout over `groups` groups of m elements, s apart (DESIGN.md,
 * "N:M targeted dropout"); the m - n = `targeted` smallest (key, index) of each group are
 * targeted. The draw index of an element is its flat index. */
typedef struct TdNmParams {
    uint64_t groups;
    uint64_t s;
    uint32_t m;
    uint32_t targeted;
    TdDraws draws;
} TdNmParams;
/* ---------------------------------------------------------------------------------------
 * The selection kernels (kernels/weight.cu). */

/* 16-byte vectors of a row per thread in td_block_*. */
#define TD_NV 4
/* The largest block of td_block_* (the host picks 64, 128, 256, 512 or 1024 threads). */
#define TD_MAX_THREADS 1024
/* Candidates of the chosen first-digit bin compacted to shared memory at most. */
#define TD_CAP 1024
/* Segments (tensors) per launch of td_block_*: what keeps TdBlockParams under the 4 KB of
 * kernel parameters that every driver accepts (the 32 KB of CUDA 12.1+ drivers are not
 * assumed); longer lists take several launches. */
#define TD_GROUP 62

/* One tensor of a td_block_* launch: rows of n elements from blocks first_block on, up to
 * the next segment's first block (or the grid's end). Device addresses as integers (0: none):
 * w the input (16-byte aligned), vals the values to mask (0: w; 16-byte aligned; the
 * recomputing backward passes the gradient), out the output (0: none; 16-byte aligned), bits
 * the flat bit mask of the dropped elements (0: none; bit e % 32 of word e / 32, 4-byte
 * aligned, ceil(rows * n / 32) words). The draw index of element i of row r is
 * elem_base + r * n + i, drawn at Philox counter words 2, 3 = offset. 0 <= k <= n; threshold
 * 0 drops nothing, TD_ALWAYS every targeted element with no draw. */
typedef struct TdSeg {
    uint64_t w;
    uint64_t vals;
    uint64_t out;
    uint64_t bits;
    uint64_t elem_base;
    uint64_t offset;
    uint32_t n;
    uint32_t k;
    uint32_t threshold;
    uint32_t first_block;
} TdSeg;

/* td_block_*: the Philox round keys of the call's seed (keys[2 i], keys[2 i + 1]: round i;
 * key [seed as u32, seed >> 32] plus i times the Weyl constants), then nseg segments in
 * ascending first_block, the first at block 0. */
typedef struct TdBlockParams {
    uint32_t keys[20];
    uint32_t nseg;
    uint32_t pad0;
    TdSeg seg[TD_GROUP];
} TdBlockParams;

/* td_tiny_*: one tensor of `rows` rows of seg.n <= TD_TINY_ROW elements (seg.first_block
 * unused), with the round keys as in TdBlockParams. */
typedef struct TdTinyParams {
    uint32_t keys[20];
    uint64_t rows;
    TdSeg seg;
} TdTinyParams;

/* Threads of the long-row kernels (td_long_*), and the 16-byte vectors per thread of one
 * tile: a tile is TD_LONG_THREADS * TD_LONG_NV vectors of one row. */
#define TD_LONG_THREADS 256
#define TD_LONG_NV 8
/* Bytes of one row's state record (kernels/weight.cu, struct LongRow). */
#define TD_LONG_STATE_BYTES 32

/* td_long_count_* (pass `pass` of `passes`), td_long_resolve_* and td_long_apply_*:
 * one tensor of `rows` rows of seg.n elements (seg.first_block unused), each row cut into
 * `chunks` tiles of TD_LONG_THREADS * TD_LONG_NV vectors; composites of the rank-k
 * element's bin compacted to at most `cap` per row. The round keys as in TdBlockParams.
 *
 * Preconditions (the host checks them): blockDim = (TD_LONG_THREADS, 1, 1); count and apply
 * a 1-D grid of at least one block (blocks take contiguous ranges of the rows * chunks
 * tiles), resolve a grid of `rows` blocks; 0 < seg.k < seg.n for count and resolve (apply
 * also takes seg.k = seg.n: everything targeted, no state read); 2 <= passes; the count
 * passes 0 .. passes - 1 run in order, then resolve, then apply; the scratch buffers as
 * their kernel parameters say (hist and state zeroed before pass 0). */
typedef struct TdLongParams {
    uint32_t keys[20];
    uint64_t rows;
    uint64_t chunks;
    uint32_t cap;
    uint32_t pass;
    uint32_t passes;
    uint32_t pad0;
    TdSeg seg;
} TdLongParams;

/* td_bwd_*: out[e] = bit e of the mask ? +0 : g[e] for e < numel (g and out 16-byte
 * aligned, the mask 4-byte aligned). td_mask_u8: mask[e] = bit e of bits for e < numel
 * (mask 16-byte aligned). Both: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one
 * block. */
typedef struct TdBwdParams {
    uint64_t numel;
} TdBwdParams;

/* td_pack_count, td_pack_* and td_unpack_*: numel elements in chunks of TD_PACK_CHUNK =
 * 32 * TD_BLOCK (a mask word per thread), chunks = ceil(numel / TD_PACK_CHUNK) of them.
 * Preconditions: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block; bits holds
 * ceil(numel / 32) words (bits past numel ignored); td_pack_count writes counts[chunks];
 * offsets[c] is the exclusive prefix sum of those counts and values holds their total. */
#define TD_PACK_CHUNK 8192
typedef struct TdPackParams {
    uint64_t numel;
    uint64_t chunks;
} TdPackParams;

#endif /* TD_PARAMS_H */
