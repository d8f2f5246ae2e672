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

/* Threads per block of every kernel. */
#define TD_BLOCK 256
/* Rows of at most this many elements go to the thread-per-row kernel (tdw_tiny). */
#define TD_TINY_ROW 32
/* Rows whose bytes fit here are staged in shared memory, one block per row (tdw_block). */
#define TD_BLOCK_ROW_BYTES 65536
/* Elements of a row per block in the long-row kernels. */
#define TD_LONG_CHUNK 4096
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

/* unit_scores_block_* and unit_scores_tiny_*: the squared L2 norm of each of `units` rows
 * of n elements.
 *
 * Preconditions: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block; units >= 1,
 * n >= 1; unit_scores_tiny: n <= TD_TINY_ROW (one thread holds the 32 lanes of a unit);
 * scores holds `units` accumulators (f32, or f64 for f64 input). */
typedef struct UnitScoresParams {
    uint64_t units;
    uint64_t n;
} UnitScoresParams;

/* unit_apply_*: numel elements in units of n, each unit dropped as a whole by its flag.
 *
 * Preconditions: blockDim = (TD_BLOCK, 1, 1), a 1-D grid of at least one block; n >= 1 and
 * numel a multiple of n; umask holds numel / n flags (0 or 1); vals non-null, out and mask
 * may be null. */
typedef struct UnitApplyParams {
    uint64_t numel;
    uint64_t n;
} UnitApplyParams;

/* tdnm_*: N:M targeted dropout over `groups` groups of m elements, s apart (DESIGN.md,
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
 * v5 (kernels/weight_v5.cu). */

/* 16-byte vectors of a row per thread in tdw5_block_*. */
#define TD5_NV 4
/* The largest block of tdw5_block_* (the host picks 64, 128, 256, 512 or 1024 threads). */
#define TD5_MAX_THREADS 1024
/* Candidates of the chosen first-digit bin compacted to shared memory at most. */
#define TD5_CAP 1024
/* Segments (tensors) per launch of tdw5_block_*: what keeps Td5Params under the 4 KB of
 * kernel parameters that every driver accepts (the 32 KB of CUDA 12.1+ drivers are not
 * assumed); longer lists take several launches. */
#define TD5_GROUP 62

/* One tensor of a tdw5_block_* launch: rows of n elements from blocks first_block on, up to
 * the next segment's first block (or the grid's end). Device addresses as integers (0: none):
 * w the input (16-byte aligned), vals the values to mask (0: w; 16-byte aligned; the
 * recomputing backward passes the gradient), out the output (0: none; 16-byte aligned), bits
 * the flat bit mask of the dropped elements (0: none; bit e % 32 of word e / 32, 4-byte
 * aligned, ceil(rows * n / 32) words). The draw index of element i of row r is
 * elem_base + r * n + i, drawn at Philox counter words 2, 3 = offset. 0 <= k <= n; threshold
 * 0 drops nothing, TD_ALWAYS every targeted element with no draw. */
typedef struct Td5Seg {
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
} Td5Seg;

/* tdw5_block_*: the Philox round keys of the call's seed (keys[2 i], keys[2 i + 1]: round i;
 * key [seed as u32, seed >> 32] plus i times the Weyl constants), then nseg segments in
 * ascending first_block, the first at block 0. */
typedef struct Td5Params {
    uint32_t keys[20];
    uint32_t nseg;
    uint32_t pad0;
    Td5Seg seg[TD5_GROUP];
} Td5Params;

/* tdw5_tiny_*: one tensor of `rows` rows of seg.n <= TD_TINY_ROW elements (seg.first_block
 * unused), with the round keys as in Td5Params. */
typedef struct Td5TinyParams {
    uint32_t keys[20];
    uint64_t rows;
    Td5Seg seg;
} Td5TinyParams;

/* Threads of the long-row kernels (tdw5_long_*), and the 16-byte vectors per thread of one
 * tile: a tile is TD5_LONG_THREADS * TD5_LONG_NV vectors of one row. */
#define TD5_LONG_THREADS 256
#define TD5_LONG_NV 8
/* Bytes of one row's state record (kernels/weight_v5.cu, struct LongRow). */
#define TD5_LONG_STATE_BYTES 32
/* Bins of a digit of the v5 selection (11-bit digits). */
#define TD5_BINS 2048

/* tdw5_long_count_* (pass `pass` of `passes`), tdw5_long_resolve_* and tdw5_long_apply_*:
 * one tensor of `rows` rows of seg.n elements (seg.first_block unused), each row cut into
 * `chunks` tiles of TD5_LONG_THREADS * TD5_LONG_NV vectors; composites of the rank-k
 * element's bin compacted to at most `cap` per row. The round keys as in Td5Params.
 *
 * Preconditions (the host checks them): blockDim = (TD5_LONG_THREADS, 1, 1); count and apply
 * a 1-D grid of at least one block (blocks take contiguous ranges of the rows * chunks
 * tiles), resolve a grid of `rows` blocks; 0 < seg.k < seg.n for count and resolve (apply
 * also takes seg.k = seg.n: everything targeted, no state read); 2 <= passes; the count
 * passes 0 .. passes - 1 run in order, then resolve, then apply; the scratch buffers as
 * their kernel parameters say (hist and state zeroed before pass 0). */
typedef struct Td5LongParams {
    uint32_t keys[20];
    uint64_t rows;
    uint64_t chunks;
    uint32_t cap;
    uint32_t pass;
    uint32_t passes;
    uint32_t pad0;
    Td5Seg seg;
} Td5LongParams;

/* td5_bwd_*: out[e] = bit e of the mask ? +0 : g[e] for e < numel (g and out 16-byte
 * aligned, the mask 4-byte aligned). */
typedef struct Td5BwdParams {
    uint64_t numel;
} Td5BwdParams;

#endif /* TD_PARAMS_H */
