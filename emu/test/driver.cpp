// The library's kernels on the emulator, launched as the launch plan (src/plan/weight.rs,
// unit.rs, mod.rs) launches them (same kernels, grids, block sizes and parameter structs, per
// device profile), on random cases against a CPU reference written from DESIGN.md. Needs no
// Rust: the sanitizer runs (ASan + UBSan, TSan) build this with the emulator
// (scripts/emu/build.sh) and run it; any mismatch, emulator report or sanitizer report fails
// (exit code != 0).
//
//   driver [--cases N] [--min-per-class Q] [--seed S]
//                                     N random cases (default 160), then more until each
//                                     class has Q (default 0): dtype x path (tiny, block,
//                                     long, unit), and grouped calls, u8 mask outputs,
//                                     unaligned inputs, bit mask + backward, pack / unpack per
//                                     width (u16, u32, u64); a fresh seed per
//                                     run unless --seed (printed first: the replay command)
//   driver ... --small                 smaller cases (at most 20000 elements, 150 units; the
//                                     TSan run: its cost is per thread and barrier)
//   driver --large                    large shapes ([4096, 4096], [4, 2^20], ...), once each
//   driver --selftest[-hang|-asan N|-tsan N]   the emulator's self-tests (harness.h)
//
// What the plan launches, and so this driver:
// - weight selection (td_tiny_<w>_t<T> for rows of at most TD_TINY_ROW, td_block_<w>_t<T>
//   for rows a block holds, td_long_count / resolve / apply_<w> past that); an unaligned
//   input (or gradient) is first copied to a 16-byte aligned buffer; a u8 mask output is the
//   selection writing bits, then td_mask_u8; k = 0 or threshold 0 is a copy (no launch);
// - grouped calls: the td_block launches of many tensors of one width and seed merged into
//   launches of at most TD_GROUP segments (src/plan/mod.rs, `group`);
// - the backward from a kept bit mask (td_bwd_<w>);
// - unit dropout: td_unit_scores_{tiny,block}_<dtype>, the selection over the scores as one
//   row (draw index = unit index) writing bits into a zeroed bit buffer, td_unit_apply_<w>;
// - pack / unpack of the dropped elements (VarMapDropout on a device): td_pack_count, the
//   host's prefix sums, td_pack_<w>, then a copy of the dropped weight and td_unpack_<w>; the
//   reference is the set bits' elements in element order and the round trip gives w back,
//   with all-zero, all-ones, sparse, dense, per-chunk and one-bit masks, garbage bits past
//   numel, numel at word and chunk edges and more chunks than blocks (grid-stride).
//
// Every launch goes through the C ABI td_emu_launch with a schedule that rotates over thread
// order (forward, reverse, random), warp run-ahead (off, on), fibers interleaved at memory
// accesses (every fourth launch) and 1..3 block workers. A launch that runs past
// TD_DRIVER_LAUNCH_TIMEOUT seconds (default 180) ends the run with a HANG report and exit code
// 124: a kernel that loops through its barriers for ever (which the emulator's watchdog, a
// thread that reaches no barrier, does not see). Every buffer, the plan's scratch
// buffers and each tensor of a grouped call included, has guard regions (harness.h); buffers
// the plan leaves uninitialised start as garbage.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "../../kernels/params.h"
#include "../td_emu.h"
#include "harness.h"
#include "reference.h"

using harness::GuardedBuf;

static int g_fail = 0;
static uint64_t g_launches = 0;
static bool g_small = false;  // --small

// ---------------------------------------------------------------------------------------
// Random numbers (splitmix64)

static uint64_t g_rng = 1;
static uint64_t rnd() { return ref::splitmix(g_rng); }
static double rnd01() { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }

// ---------------------------------------------------------------------------------------
// Reference, from DESIGN.md (shares nothing with the kernels)

// Philox, the draws and the keys: emu/test/reference.h.
using ref::draw;
using ref::philox_kat;
static bool dropped(bool targeted, uint64_t e, const TdDraws& d) {
    if (!targeted || d.threshold == 0) return false;
    return ref::drop(draw(e, d.seed, d.offset), d.threshold, TD_ALWAYS);
}

// The dropped flags of rows x rows of n raw elements (width bytes each): the k smallest
// (key, index) of each row targeted, draw index elem_base + r * n + i.
static std::vector<uint8_t> ref_select(const void* w, unsigned width, uint64_t rows, uint64_t n, uint64_t k,
                                       uint64_t elem_base, const TdDraws& d) {
    std::vector<uint8_t> dr(rows * n);
    std::vector<std::pair<uint64_t, uint64_t>> keys(n);
    for (uint64_t r = 0; r < rows; r++) {
        for (uint64_t i = 0; i < n; i++) {
            keys[i] = {ref::key((const char*)w + (r * n + i) * width, width), i};
        }
        std::sort(keys.begin(), keys.end());
        for (uint64_t j = 0; j < n; j++) {
            const uint64_t i = keys[j].second;
            dr[r * n + i] = dropped(j < k, elem_base + r * n + i, d);
        }
    }
    return dr;
}

static float f16_to_f32(uint16_t h) {
    const int exp = (h >> 10) & 31, man = h & 1023;
    double v;
    if (exp == 31) v = man ? NAN : INFINITY;
    else if (exp == 0) v = ldexp((double)man, -24);
    else v = ldexp((double)(1024 + man), exp - 25);
    return (h & 0x8000) ? -(float)v : (float)v;
}

// Unit scores in the documented order: lane j sums x[j + 1024 m]^2 from +0.0, then the lanes
// fold pairwise for s = 512 .. 1; NaN canonical. kind: 0 f32, 1 f16, 2 bf16, 3 f64.
template <typename A> static A ref_score(const void* x, int kind, uint64_t n) {
    std::vector<A> lane(1024, (A)0);
    for (uint64_t i = 0; i < n; i++) {
        A v;
        if (kind == 0) { float f; memcpy(&f, (const char*)x + 4 * i, 4); v = (A)f; }
        else if (kind == 1) { uint16_t h; memcpy(&h, (const char*)x + 2 * i, 2); v = (A)f16_to_f32(h); }
        else if (kind == 2) { uint16_t h; memcpy(&h, (const char*)x + 2 * i, 2); uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); v = (A)f; }
        else { double f; memcpy(&f, (const char*)x + 8 * i, 8); v = (A)f; }
        const A sq = v * v;
        lane[i % 1024] = lane[i % 1024] + sq;
    }
    for (int s = 512; s >= 1; s >>= 1)
        for (int j = 0; j < s; j++) lane[j] = lane[j] + lane[j + s];
    A r = lane[0];
    if (r != r) {
        if (sizeof(A) == 4) { uint32_t b = 0x7fc00000u; memcpy(&r, &b, 4); }
        else { uint64_t b = 0x7ff8000000000000ull; memcpy(&r, &b, 8); }
    }
    return r;
}

// ---------------------------------------------------------------------------------------
// Device profiles and the launch plan of src/plan/

// The plan needs only the multiprocessor count (the grids of the grid-stride kernels); the
// kernels take no dynamic shared memory.
struct Profile {
    const char* name;
    uint64_t sms;
};
static const Profile kProfiles[] = {
    {"h200", 132},
    {"sm86", 28},
    {"1sm", 1},  // long rows: 8 blocks, each several tiles across rows
    {"2sm", 2},
};

static TdEmuSchedule next_schedule() {
    const uint64_t c = g_launches++;
    TdEmuSchedule s = emu::schedule_from_env(c);
    if (!getenv("TD_EMU_WORKERS")) s.block_workers = 1 + (uint32_t)(c % 3);
    return s;
}

// The launch watchdog: the start (CLOCK_MONOTONIC seconds, 0: none running) and kernel of the
// launch in flight, checked every second by a thread; the longest launch so far.
static std::atomic<double> g_launch_t0{0};
static std::atomic<const char*> g_launch_name{""};
static double g_launch_max = 0;
static std::string g_launch_max_name;
static double mono() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static void start_watchdog() {
    const char* e = getenv("TD_DRIVER_LAUNCH_TIMEOUT");
    const double limit = e ? atof(e) : 180;
    std::thread([limit] {
        for (;;) {
            sleep(1);
            const double t0 = g_launch_t0.load();
            if (t0 > 0 && mono() - t0 > limit) {
                fprintf(stderr,
                        "HANG: a launch of %s has run for more than %g s (a kernel that does not end; "
                        "TD_DRIVER_LAUNCH_TIMEOUT=%g)\n",
                        g_launch_name.load(), limit, limit);
                fflush(stderr);
                _exit(124);
            }
        }
    }).detach();
}

static bool launch(const std::string& name, uint64_t grid, uint32_t block, std::vector<void*> args) {
    char err[2048];
    const TdEmuSchedule s = next_schedule();
    static char names[2][128];  // the name outlives the launch (the watchdog may read it late)
    static int cur = 0;
    cur ^= 1;
    snprintf(names[cur], sizeof names[cur], "%s", name.c_str());
    g_launch_name = names[cur];
    const double t0 = mono();
    g_launch_t0 = t0;
    const int rc = td_emu_launch(name.c_str(), (uint32_t)std::max<uint64_t>(grid, 1), 1, 1, block, 1, 1, 0, args.data(),
                      (uint32_t)args.size(), &s, err, sizeof err);
    g_launch_t0 = 0;
    if (mono() - t0 > g_launch_max) {
        g_launch_max = mono() - t0;
        g_launch_max_name = name;
    }
    if (rc != 0) {
        fprintf(stderr, "EMULATOR: %s (schedule: order %u, run-ahead %u, workers %u)\n", err, s.thread_order,
                s.warp_runahead, s.block_workers);
        return false;
    }
    return true;
}

static const char* wname(unsigned size) { return size == 2 ? "u16" : size == 4 ? "u32" : "u64"; }
static uint64_t bits_bytes(uint64_t numel) { return (numel + 31) / 32 * 4; }
static uint64_t dev(const void* p) { return (uint64_t)(uintptr_t)p; }

// tiny_threads of src/plan/mod.rs.
static unsigned tiny_threads(unsigned sz) { return sz == 8 ? 128 : 256; }

// block_threads of src/plan/weight.rs: the smallest block (64 .. 1024 threads, TD_NV 16-byte
// vectors each) that holds a row of n (a row that starts mid-vector spans one vector more);
// 0 past the largest.
static unsigned block_threads(unsigned sz, uint64_t n) {
    const uint64_t ve = 16 / sz;
    const uint64_t vectors = n % ve == 0 ? n / ve : (n + 2 * ve - 2) / ve;
    for (unsigned t = 64; t <= TD_MAX_THREADS; t *= 2)
        if ((uint64_t)t * TD_NV >= vectors) return t;
    return 0;
}

// The longest row of the block path for width sz.
static uint64_t block_max(unsigned sz) {
    uint64_t n = (uint64_t)TD_MAX_THREADS * TD_NV * (16 / sz);
    while (block_threads(sz, n) == 0) n--;
    return n;
}

// The path of a selection row: 0 tiny, 1 block, 2 long.
static int path_of(unsigned sz, uint64_t n) { return n <= TD_TINY_ROW ? 0 : block_threads(sz, n) ? 1 : 2; }

// round_keys of src/plan/weight.rs.
static void round_keys(uint64_t seed, uint32_t* keys) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        keys[2 * i] = k0;
        keys[2 * i + 1] = k1;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// long_shape of src/plan/weight.rs: tiles per row, candidates per row at most, passes.
struct LongShape {
    uint64_t chunks;
    uint32_t cap, passes;
};
static LongShape long_shape(unsigned sz, uint64_t n) {
    const uint64_t ve = 16 / sz, vectors = (n + 2 * ve - 2) / ve;
    const uint64_t tile = (uint64_t)TD_LONG_THREADS * TD_LONG_NV;
    uint64_t cap = 1;
    while (cap < n / 16) cap <<= 1;
    cap = std::min<uint64_t>(std::max<uint64_t>(cap, 1 << 12), 1 << 16);
    const uint64_t cw = sz * 8 - 1 + 32;
    uint64_t log_cap = 0;
    while ((1ull << log_cap) < cap) log_cap++;
    uint64_t j = 1;
    while (n > cap && (cw > 11 * j ? cw - 11 * j : 0) > log_cap) j++;
    return {(vectors + tile - 1) / tile, (uint32_t)cap, (uint32_t)(j + 1)};
}

// A selection (src/plan/weight.rs, Select): rows x n elements of width sz at w; masked vals
// (or w) into out, the u8 flags into mask, the bit mask into bits (each optional).
struct Sel {
    unsigned sz;
    const uint8_t* w;
    const uint8_t* vals;
    uint8_t* out;
    uint8_t* mask;
    uint32_t* bits;
    uint64_t rows, n, k, elem_base;
    TdDraws draws;
    bool aligned16;
};

static TdSeg seg_of(const Sel& s) {
    TdSeg g;
    memset(&g, 0, sizeof g);
    g.w = dev(s.w);
    g.vals = dev(s.vals);
    g.out = dev(s.out);
    g.bits = dev(s.bits);
    g.elem_base = s.elem_base;
    g.offset = s.draws.offset;
    g.n = (uint32_t)s.n;
    g.k = (uint32_t)s.k;
    g.threshold = s.draws.threshold;
    return g;
}

// long_rows of src/plan/weight.rs: the count passes, the resolve, the output pass (only the
// output pass at k = n); the scratch buffers guarded, hist and state zeroed, the candidates
// garbage.
static bool long_rows(const Profile& pf, const Sel& s) {
    const LongShape sh = long_shape(s.sz, s.n);
    TdLongParams p;
    memset(&p, 0, sizeof p);
    round_keys(s.draws.seed, p.keys);
    p.rows = s.rows;
    p.chunks = sh.chunks;
    p.cap = sh.cap;
    p.passes = sh.passes;
    p.seg = seg_of(s);
    const uint64_t blocks = std::min<uint64_t>(s.rows * sh.chunks, pf.sms * 8);
    const std::string w = wname(s.sz);
    GuardedBuf state(s.rows * sh.passes * TD_LONG_STATE_BYTES, 0, 0);
    void* sp = state.data();
    if (s.k < s.n) {
        GuardedBuf hist(s.rows * (sh.passes - 1) * TD_RADIX_BINS * 4, 0, 0);
        GuardedBuf cand(s.rows * sh.cap * (s.sz == 8 ? 16 : 8), 0, 0xEE);
        void* hp = hist.data();
        void* cp = cand.data();
        for (uint32_t pass = 0; pass < sh.passes; pass++) {
            p.pass = pass;
            if (!launch("td_long_count_" + w, blocks, TD_LONG_THREADS, {&hp, &sp, &cp, &p})) return false;
        }
        if (!launch("td_long_resolve_" + w, s.rows, TD_LONG_THREADS, {&sp, &cp, &p})) return false;
        if (!hist.check("long-row histograms") || !cand.check("long-row candidates")) return false;
    }
    return launch("td_long_apply_" + w, blocks, TD_LONG_THREADS, {&sp, &p}) && state.check("long-row state");
}

// select_aligned of src/plan/weight.rs.
static bool select_aligned(const Profile& pf, const Sel& s) {
    if (s.n <= TD_TINY_ROW) {
        const unsigned t = tiny_threads(s.sz);
        TdTinyParams p;
        memset(&p, 0, sizeof p);
        round_keys(s.draws.seed, p.keys);
        p.rows = s.rows;
        p.seg = seg_of(s);
        const uint64_t blocks = std::min<uint64_t>((s.rows + t - 1) / t, pf.sms * 8);
        return launch(std::string("td_tiny_") + wname(s.sz) + "_t" + std::to_string(t), blocks, t, {&p});
    }
    const unsigned t = block_threads(s.sz, s.n);
    if (t == 0) return long_rows(pf, s);
    TdBlockParams p;
    memset(&p, 0, sizeof p);
    round_keys(s.draws.seed, p.keys);
    p.nseg = 1;
    p.seg[0] = seg_of(s);
    return launch(std::string("td_block_") + wname(s.sz) + "_t" + std::to_string(t), s.rows, t, {&p});
}

// td_mask_u8 over numel flags from bits (src/plan/weight.rs, select_rows).
static bool mask_u8(const Profile& pf, const uint32_t* bits, uint8_t* mask, uint64_t numel) {
    const uint64_t words = (numel + 31) / 32;
    const uint64_t blocks = std::min<uint64_t>((words + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 16);
    TdBwdParams p = {numel};
    return launch("td_mask_u8", blocks, TD_BLOCK, {&bits, &mask, &p});
}

// The part of select_rows of src/plan/weight.rs before the launches: k = 0 or threshold 0 is
// a copy; an unaligned input is copied to an aligned buffer first; a u8 mask needs bits.
// `aligned` gets the selection over aligned buffers (bits set when a u8 mask is asked).
struct Prepared {
    Sel aligned;
    bool copied = false;  // nothing dropped: the outputs are written already
    std::unique_ptr<GuardedBuf> wa, va, bits;
};
static void prepare(const Sel& s, Prepared& pr) {
    const uint64_t numel = s.rows * s.n;
    pr.aligned = s;
    if (s.k == 0 || s.draws.threshold == 0) {
        if (s.out) memcpy(s.out, s.vals ? s.vals : s.w, numel * s.sz);
        if (s.mask) memset(s.mask, 0, numel);
        if (s.bits) memset(s.bits, 0, bits_bytes(numel));
        pr.copied = true;
        return;
    }
    if (!s.aligned16) {
        pr.wa.reset(new GuardedBuf(numel * s.sz, 0, 0xEE));
        memcpy(pr.wa->data(), s.w, numel * s.sz);
        pr.aligned.w = pr.wa->data();
        if (s.vals) {
            pr.va.reset(new GuardedBuf(numel * s.sz, 0, 0xEE));
            memcpy(pr.va->data(), s.vals, numel * s.sz);
            pr.aligned.vals = pr.va->data();
        }
    }
    if (s.mask && !s.bits) {
        // Buf::Bits, uninitialised (every bit of an element is written).
        pr.bits.reset(new GuardedBuf(bits_bytes(numel), 0, 0xCD));
        pr.aligned.bits = pr.bits->as<uint32_t>();
    }
    pr.aligned.mask = nullptr;
    pr.aligned.aligned16 = true;
}
static bool finish(const Profile& pf, const Sel& s, Prepared& pr) {
    if (pr.copied) return true;
    if (s.mask && !mask_u8(pf, pr.aligned.bits, s.mask, s.rows * s.n)) return false;
    return (!pr.wa || pr.wa->check("aligned copy of w")) && (!pr.va || pr.va->check("aligned copy of values")) &&
           (!pr.bits || pr.bits->check("bit mask of a u8 mask"));
}

// select_rows of src/plan/weight.rs.
static bool select_rows(const Profile& pf, const Sel& s) {
    Prepared pr;
    prepare(s, pr);
    if (pr.copied) return true;
    return select_aligned(pf, pr.aligned) && finish(pf, s, pr);
}

// A grouped call (src/plan/mod.rs, `group`): the selections of one width and seed; those
// whose plan is one td_block launch are merged into launches of at most TD_GROUP segments
// (each with the block size of its longest row), the others run alone (copies, tiny rows).
static bool select_grouped(const Profile& pf, const std::vector<Sel>& sels) {
    std::vector<Prepared> prs(sels.size());
    std::vector<size_t> merged;
    for (size_t i = 0; i < sels.size(); i++) {
        prepare(sels[i], prs[i]);
        if (prs[i].copied) continue;
        if (path_of(sels[i].sz, sels[i].n) == 1) merged.push_back(i);
        else if (!select_aligned(pf, prs[i].aligned)) return false;
    }
    for (size_t g0 = 0; g0 < merged.size(); g0 += TD_GROUP) {
        const size_t g1 = std::min(merged.size(), g0 + (size_t)TD_GROUP);
        TdBlockParams p;
        memset(&p, 0, sizeof p);
        round_keys(sels[merged[g0]].draws.seed, p.keys);
        uint64_t total = 0, max_n = 0;
        for (size_t j = g0; j < g1; j++) {
            const Sel& a = prs[merged[j]].aligned;
            TdSeg& sg = p.seg[p.nseg++];
            sg = seg_of(a);
            sg.first_block = (uint32_t)total;
            total += a.rows;
            max_n = std::max(max_n, a.n);
        }
        const unsigned t = block_threads(sels[0].sz, max_n);
        if (!launch(std::string("td_block_") + wname(sels[0].sz) + "_t" + std::to_string(t), total, t, {&p}))
            return false;
    }
    for (size_t i = 0; i < sels.size(); i++)
        if (!finish(pf, sels[i], prs[i])) return false;
    return true;
}

static const char* kDtype[] = {"f32", "f16", "bf16", "f64"};
static unsigned dsize(int dt) { return dt == 3 ? 8 : dt == 0 ? 4 : 2; }

// scores of src/plan/unit.rs.
static bool launch_scores(const Profile& pf, int dt, const void* w, void* scores, uint64_t d0, uint64_t n) {
    UnitScoresParams p = {d0, n};
    const bool tiny = n <= TD_TINY_ROW;
    const std::string nm = std::string(tiny ? "td_unit_scores_tiny_" : "td_unit_scores_block_") + kDtype[dt];
    const uint64_t grid = tiny ? std::min<uint64_t>((d0 + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 8)
                               : std::min<uint64_t>(d0, pf.sms * 8);
    return launch(nm, grid, TD_BLOCK, {&w, &scores, &p});
}

// backward_bits of src/plan/mod.rs: out = g with the elements whose bit is set zeroed.
static bool backward_bits(const Profile& pf, unsigned sz, const void* g, void* out, const uint32_t* bits,
                          uint64_t numel) {
    const uint64_t vectors = numel / (16 / sz);
    const uint64_t blocks =
        std::max<uint64_t>(1, std::min<uint64_t>((vectors + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 16));
    TdBwdParams p = {numel};
    return launch(std::string("td_bwd_") + wname(sz), blocks, TD_BLOCK, {&g, &out, &bits, &p});
}

// ---------------------------------------------------------------------------------------
// Cases

// Raw bits of dtype dt: kinds 0 randn, 1 few values (ties), 2 edge values, 3 one value,
// 4 +-0 only, 5 30% zeros.
static void fill(std::vector<uint8_t>& buf, int dt, uint64_t numel, int kind) {
    const unsigned sz = dsize(dt);
    buf.assign(numel * sz, 0);
    auto from_d = [&](double v) -> uint64_t {
        if (dt == 3) { uint64_t b; memcpy(&b, &v, 8); return b; }
        float f = (float)v;
        uint32_t b;
        memcpy(&b, &f, 4);
        if (dt == 0) return b;
        if (dt == 2) return b >> 16;
        // f16 of a float (truncating: any bits will do as long as they are f16 bits)
        const uint32_t s = (b >> 16) & 0x8000;
        const int e = (int)((b >> 23) & 255) - 127 + 15;
        if (e <= 0) return s;
        if (e >= 31) return s | 0x7c00;
        return s | (uint32_t)(e << 10) | ((b >> 13) & 1023);
    };
    auto randn = [&]() {
        double u1 = std::max(rnd01(), 1e-300), u2 = rnd01();
        return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
    };
    const uint64_t top = 1ull << (8 * sz - 1);
    uint64_t few[5];
    for (auto& f : few) f = from_d(randn());
    const uint64_t one = from_d(randn());
    for (uint64_t i = 0; i < numel; i++) {
        uint64_t x;
        switch (kind) {
            case 0: x = from_d(randn()); break;
            case 1: x = few[rnd() % 5] ^ ((rnd() & 1) ? top : 0); break;
            case 2: {
                const uint64_t r = rnd() % 12;
                const uint64_t expmask = sz == 2 ? (dt == 1 ? 0x7c00 : 0x7f80) : sz == 4 ? 0x7f800000ull : 0x7ff0000000000000ull;
                x = r == 0 ? 0 : r == 1 ? top : r == 2 ? 1 : r == 3 ? expmask : r == 4 ? expmask | 1 : r == 5 ? top - 1
                  : r == 6 ? (expmask | (expmask >> 1)) : r == 7 ? (top | expmask) : from_d(randn());
                break;
            }
            case 3: x = one; break;
            case 4: x = (rnd() & 1) ? top : 0; break;
            default: x = rnd() % 10 < 3 ? 0 : from_d(randn()); break;
        }
        memcpy(&buf[i * sz], &x, sz);
    }
}

struct Case {
    int prof, dt;
    bool unit;
    bool values;  // values out (else the u8 mask)
    bool grad;    // values from a gradient (the recomputing backward)
    bool bits;    // (weight, values out) the bit mask kept, then the backward from it
    uint64_t d0, n, k, elem_base;
    TdDraws draws;
    int kind;
    unsigned misalign;
};

static int path_of(const Case& c) {
    return c.unit ? 3 : path_of(dsize(c.dt), c.n);
}

static std::string describe(const Case& c) {
    static const char* kPath[] = {"tiny", "block", "long", "unit"};
    char b[600];
    snprintf(b, sizeof b,
             "profile %s %s %s (%s path) [%llu, %llu] k=%llu elem_base=%llu threshold=%u seed=%llx offset=%llu "
             "kind=%d output=%s%s%s misalign=%u",
             kProfiles[c.prof].name, kDtype[c.dt], c.unit ? "unit" : "weight", kPath[path_of(c)],
             (unsigned long long)c.d0, (unsigned long long)c.n, (unsigned long long)c.k,
             (unsigned long long)c.elem_base, c.draws.threshold, (unsigned long long)c.draws.seed,
             (unsigned long long)c.draws.offset, c.kind, c.values ? "values" : "mask",
             c.grad ? " (backward: values from a gradient)" : "", c.bits ? " +bits +backward" : "", c.misalign);
    return b;
}

// A guarded allocation at `misalign` elements past an aligned address.
struct Buf {
    GuardedBuf b;
    uint8_t* p = nullptr;
    void init(const std::vector<uint8_t>& src, unsigned sz, unsigned misalign) {
        b.alloc(src.size(), (size_t)misalign * sz);
        p = b.data();
        memcpy(p, src.data(), src.size());
    }
};

// The reference's dropped flags of a case.
static std::vector<uint8_t> ref_case(const Case& c, const std::vector<uint8_t>& wb) {
    const unsigned sz = dsize(c.dt);
    if (!c.unit) return ref_select(wb.data(), sz, c.d0, c.n, c.k, c.elem_base, c.draws);
    std::vector<uint8_t> scores(c.d0 * (c.dt == 3 ? 8 : 4));
    for (uint64_t u = 0; u < c.d0; u++) {
        if (c.dt == 3) { double s = ref_score<double>(&wb[u * c.n * sz], c.dt, c.n); memcpy(&scores[u * 8], &s, 8); }
        else { float s = ref_score<float>(&wb[u * c.n * sz], c.dt, c.n); memcpy(&scores[u * 4], &s, 4); }
    }
    const std::vector<uint8_t> um = ref_select(scores.data(), c.dt == 3 ? 8 : 4, 1, c.d0, c.k, 0, c.draws);
    std::vector<uint8_t> d(c.d0 * c.n);
    for (uint64_t e = 0; e < d.size(); e++) d[e] = um[e / c.n];
    return d;
}

// The outputs of a case against the reference; then (bits) the backward from the bit mask
// on a fresh gradient.
static bool check_case(const Case& c, const std::vector<uint8_t>& want_drop, const std::vector<uint8_t>& src,
                       const uint8_t* out, const uint8_t* mask, const uint32_t* bits) {
    const unsigned sz = dsize(c.dt);
    const uint64_t numel = c.d0 * c.n;
    for (uint64_t e = 0; e < numel; e++) {
        uint64_t got = 0, want = 0;
        if (c.values) {
            memcpy(&got, out + e * sz, sz);
            if (!want_drop[e]) memcpy(&want, &src[e * sz], sz);
        } else {
            got = mask[e];
            want = want_drop[e];
        }
        if (got != want) {
            fprintf(stderr, "MISMATCH %s: element %llu (row %llu, col %llu): got %llx want %llx\n  case: %s\n",
                    c.values ? "values" : "mask", (unsigned long long)e, (unsigned long long)(e / c.n),
                    (unsigned long long)(e % c.n), (unsigned long long)got, (unsigned long long)want,
                    describe(c).c_str());
            return false;
        }
        if (bits && ((bits[e / 32] >> (e % 32)) & 1) != want_drop[e]) {
            fprintf(stderr, "MISMATCH bit mask: element %llu (row %llu, col %llu): got %u want %u\n  case: %s\n",
                    (unsigned long long)e, (unsigned long long)(e / c.n), (unsigned long long)(e % c.n),
                    (bits[e / 32] >> (e % 32)) & 1, want_drop[e], describe(c).c_str());
            return false;
        }
    }
    return true;
}

static bool backward_case(const Case& c, const std::vector<uint8_t>& want_drop, const uint32_t* bits) {
    const unsigned sz = dsize(c.dt);
    const uint64_t numel = c.d0 * c.n;
    std::vector<uint8_t> gb;
    fill(gb, c.dt, numel, 0);
    GuardedBuf g(numel * sz, 0, 0), out(numel * sz, 0, 0xAB);
    memcpy(g.data(), gb.data(), gb.size());
    if (!backward_bits(kProfiles[c.prof], sz, g.data(), out.data(), bits, numel) || !g.check("gradient") ||
        !out.check("backward out")) {
        fprintf(stderr, "  case (backward): %s\n", describe(c).c_str());
        return false;
    }
    for (uint64_t e = 0; e < numel; e++) {
        uint64_t got = 0, want = 0;
        memcpy(&got, out.data() + e * sz, sz);
        if (!want_drop[e]) memcpy(&want, &gb[e * sz], sz);
        if (got != want) {
            fprintf(stderr, "MISMATCH backward: element %llu: got %llx want %llx\n  case: %s\n",
                    (unsigned long long)e, (unsigned long long)got, (unsigned long long)want, describe(c).c_str());
            return false;
        }
    }
    return true;
}

static bool run_case(const Case& c) {
    const Profile& pf = kProfiles[c.prof];
    const unsigned sz = dsize(c.dt);
    const uint64_t numel = c.d0 * c.n;
    std::vector<uint8_t> wb, gb;
    fill(wb, c.dt, numel, c.kind);
    if (c.grad) fill(gb, c.dt, numel, 0);
    Buf w, g;
    w.init(wb, sz, c.misalign);
    if (c.grad) g.init(gb, sz, c.misalign);
    // The op's output, uninitialised (garbage); Buf::Bits likewise.
    GuardedBuf out(c.values ? numel * sz : 0, 0, 0xAB), mask(c.values ? 0 : numel, 0, 0xAB);
    GuardedBuf bits(c.bits ? bits_bytes(numel) : 0, 0, 0xCD);
    const std::vector<uint8_t> want_drop = ref_case(c, wb);
    bool ok = true;
    const uint8_t* vals = c.grad ? g.p : nullptr;
    uint8_t* outp = c.values ? out.data() : nullptr;
    uint8_t* maskp = c.values ? nullptr : mask.data();
    uint32_t* bitsp = c.bits ? bits.as<uint32_t>() : nullptr;
    if (!c.unit) {
        Sel s{sz, w.p, vals, outp, maskp, bitsp, c.d0, c.n, c.k, c.elem_base, c.draws, c.misalign == 0};
        ok = select_rows(pf, s);
    } else {
        // src/plan/unit.rs: Buf::UnitBits zeroed, the scores zeroed.
        const unsigned asz = c.dt == 3 ? 8 : 4;
        GuardedBuf ubits(bits_bytes(c.d0), 0, 0);
        if (c.k > 0 && c.draws.threshold != 0) {
            GuardedBuf scores(c.d0 * asz, 0, 0);
            Sel s{asz, scores.data(), nullptr, nullptr, nullptr, ubits.as<uint32_t>(), 1, c.d0, c.k, 0, c.draws, true};
            ok = launch_scores(pf, c.dt, w.p, scores.data(), c.d0, c.n) && scores.check("scores") &&
                 select_rows(pf, s) && ubits.check("unit bits");
        }
        if (ok) {
            const uint64_t groups = (numel + 3) / 4;
            const uint64_t grid = std::min<uint64_t>((groups + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 16);
            UnitApplyParams p = {numel, c.n};
            void* nul = nullptr;
            const void* v = vals ? (const void*)vals : (const void*)w.p;
            const uint32_t* ub = ubits.as<uint32_t>();
            ok = launch(std::string("td_unit_apply_") + wname(sz), grid, TD_BLOCK,
                        {&v, outp ? (void*)&outp : (void*)&nul, maskp ? (void*)&maskp : (void*)&nul, &ub, &p}) &&
                 ubits.check("unit bits");
        }
    }
    ok = ok && w.b.check("w") && g.b.check("values") && out.check("out") && mask.check("mask") && bits.check("bits");
    if (!ok) {
        fprintf(stderr, "  case: %s\n", describe(c).c_str());
        return false;
    }
    if (!check_case(c, want_drop, c.grad ? gb : wb, out.data(), mask.data(), bitsp)) return false;
    return !c.bits || backward_case(c, want_drop, bitsp);
}

// ---------------------------------------------------------------------------------------
// Pack and unpack (src/plan/mod.rs: pack_counts, pack_offsets, pack, unpack): what
// VarMapDropout holds on a device between apply and finish. td_pack_count over the bit
// mask (counts uninitialised), the host's exclusive prefix sums of the counts (the offsets),
// td_pack (values uninitialised, no launch when nothing is held), then the round trip:
// out = a copy of the dropped weight, td_unpack writes the held elements back (no launch when
// nothing is held). Every grid is min(chunks, sms * 16) blocks of TD_BLOCK threads.

struct PackCase {
    int prof;
    unsigned sz;
    uint64_t numel;
    int mask;           // kMaskKind
    bool tail_garbage;  // the bits of the last word past numel set (at random, its top bit always)
};
static const char* kMaskKind[] = {"all-zero", "all-ones", "half", "sparse", "dense", "chunk-mix", "one-bit"};
enum { kMaskKinds = 7 };

static uint64_t pack_chunks(uint64_t numel) { return (numel + TD_PACK_CHUNK - 1) / TD_PACK_CHUNK; }
static uint64_t pack_grid(const Profile& pf, uint64_t numel) {
    return std::min<uint64_t>(pack_chunks(numel), pf.sms * 16);
}

static std::string describe(const PackCase& c) {
    char b[300];
    snprintf(b, sizeof b, "pack profile %s %s numel=%llu (%llu chunks, grid %llu) mask=%s%s", kProfiles[c.prof].name,
             wname(c.sz), (unsigned long long)c.numel, (unsigned long long)pack_chunks(c.numel),
             (unsigned long long)pack_grid(kProfiles[c.prof], c.numel), kMaskKind[c.mask],
             c.tail_garbage ? " +bits past numel set" : "");
    return b;
}

// A random pack case: numel within a word or two, at chunk edges (multiples of TD_PACK_CHUNK
// and one either side), multiples of 32, anything up to ~12 chunks (--small: 5), and more
// chunks than the grid has blocks (profile 1sm: 16 blocks, each several chunks).
static PackCase random_pack() {
    PackCase c;
    c.prof = (int)(rnd() % 4);
    c.sz = 2u << (rnd() % 3);
    const uint64_t pick = rnd() % 10;
    if (pick < 2) c.numel = 1 + rnd() % 70;
    else if (pick < 4) c.numel = TD_PACK_CHUNK * (1 + rnd() % (g_small ? 3 : 5)) + rnd() % 3 - 1;
    else if (pick < 5) c.numel = 32 * (1 + rnd() % (g_small ? 1200 : 3000));
    else if (pick < 6) {
        c.prof = 2;
        c.numel = 16 * TD_PACK_CHUNK + 1 + rnd() % ((g_small ? 2 : 4) * TD_PACK_CHUNK);
    } else c.numel = 1 + rnd() % (g_small ? 40000 : 100000);
    c.mask = (int)(rnd() % kMaskKinds);
    c.tail_garbage = rnd() % 4 != 0;
    return c;
}

static bool run_pack(const PackCase& c) {
    const Profile& pf = kProfiles[c.prof];
    const unsigned sz = c.sz;
    const uint64_t numel = c.numel, chunks = pack_chunks(numel), words = (numel + 31) / 32;
    const uint64_t grid = pack_grid(pf, numel);
    const std::string wn = wname(sz);
    // The mask (flags, and its words with the bits past numel), the weight (random bits).
    std::vector<uint8_t> flag(numel, 0);
    std::vector<uint32_t> hb(words, 0);
    const uint64_t one = numel ? rnd() % numel : 0;
    int chunk_kind = 0;
    for (uint64_t e = 0; e < numel; e++) {
        if (e % TD_PACK_CHUNK == 0) chunk_kind = (int)(rnd() % 3);
        bool f = false;
        switch (c.mask) {
            case 0: f = false; break;
            case 1: f = true; break;
            case 2: f = rnd() & 1; break;
            case 3: f = rnd() % 64 == 0; break;
            case 4: f = rnd() % 64 != 0; break;
            case 5: f = chunk_kind == 0 ? false : chunk_kind == 1 ? true : (rnd() & 1); break;
            default: f = e == one; break;
        }
        flag[e] = f;
        if (f) hb[e / 32] |= 1u << (e % 32);
    }
    if (numel % 32 && c.tail_garbage)
        hb[words - 1] |= ((uint32_t)rnd() | 0x80000000u) & ~((1u << (numel % 32)) - 1u);
    std::vector<uint8_t> wb(numel * sz);
    for (size_t i = 0; i < wb.size(); i += 8) {
        const uint64_t r = rnd();
        memcpy(&wb[i], &r, std::min<size_t>(8, wb.size() - i));
    }
    std::vector<uint32_t> want_counts(chunks, 0);
    std::vector<uint8_t> want_vals;
    for (uint64_t e = 0; e < numel; e++)
        if (flag[e]) {
            want_counts[e / TD_PACK_CHUNK]++;
            want_vals.insert(want_vals.end(), &wb[e * sz], &wb[e * sz] + sz);
        }
    auto fail = [&](const char* what) {
        fprintf(stderr, "  %s\n  case: %s\n", what, describe(c).c_str());
        return false;
    };

    GuardedBuf w(numel * sz, 0, 0), bits(words * 4, 0, 0), counts(chunks * 4, 0, 0xCD);
    memcpy(w.data(), wb.data(), wb.size());
    memcpy(bits.data(), hb.data(), words * 4);
    TdPackParams p = {numel, chunks};
    const uint8_t* wp = w.data();
    const uint32_t* bp = bits.as<uint32_t>();
    uint32_t* cp = counts.as<uint32_t>();
    // pack_counts
    if (numel > 0 && !launch("td_pack_count", grid, TD_BLOCK, {&bp, &cp, &p})) return fail("td_pack_count");
    if (!counts.check("pack counts") || !bits.check("bits")) return fail("td_pack_count");
    for (uint64_t k = 0; k < chunks; k++)
        if (cp[k] != want_counts[k]) {
            fprintf(stderr, "MISMATCH pack counts: chunk %llu of %llu: got %u want %u\n", (unsigned long long)k,
                    (unsigned long long)chunks, cp[k], want_counts[k]);
            return fail("td_pack_count");
        }
    // pack_offsets (from the counts read back, as the host does)
    GuardedBuf offs(chunks * 8, 0, 0);
    uint64_t held = 0;
    for (uint64_t k = 0; k < chunks; k++) {
        offs.as<uint64_t>()[k] = held;
        held += cp[k];
    }
    const uint64_t* op = offs.as<uint64_t>();
    // pack
    GuardedBuf vals(held * sz, 0, 0xAB);
    uint8_t* vp = vals.data();
    if (held > 0 && !launch("td_pack_" + wn, grid, TD_BLOCK, {&wp, &bp, &op, &vp, &p})) return fail("td_pack");
    if (!vals.check("packed values") || !w.check("w") || !bits.check("bits") || !offs.check("offsets"))
        return fail("td_pack");
    for (uint64_t j = 0; j < held; j++)
        if (memcmp(vp + j * sz, &want_vals[j * sz], sz)) {
            uint64_t got = 0, want = 0;
            memcpy(&got, vp + j * sz, sz);
            memcpy(&want, &want_vals[j * sz], sz);
            fprintf(stderr, "MISMATCH packed values: value %llu of %llu: got %llx want %llx\n", (unsigned long long)j,
                    (unsigned long long)held, (unsigned long long)got, (unsigned long long)want);
            return fail("td_pack");
        }
    // unpack: out = the dropped weight (here each held element's bits inverted: an element
    // the kernel misses differs from w), then td_unpack.
    GuardedBuf out(numel * sz, 0, 0xAB);
    uint8_t* outp = out.data();
    for (uint64_t e = 0; e < numel; e++)
        for (unsigned i = 0; i < sz; i++) outp[e * sz + i] = flag[e] ? (uint8_t)~wb[e * sz + i] : wb[e * sz + i];
    if (held > 0 && !launch("td_unpack_" + wn, grid, TD_BLOCK, {&bp, &op, &vp, &outp, &p})) return fail("td_unpack");
    if (!out.check("unpack out") || !vals.check("packed values") || !bits.check("bits") || !offs.check("offsets"))
        return fail("td_unpack");
    for (uint64_t e = 0; e < numel; e++)
        if (memcmp(outp + e * sz, &wb[e * sz], sz)) {
            uint64_t got = 0, want = 0;
            memcpy(&got, outp + e * sz, sz);
            memcpy(&want, &wb[e * sz], sz);
            fprintf(stderr, "MISMATCH unpack (round trip): element %llu (bit %s): got %llx want %llx\n",
                    (unsigned long long)e, flag[e] ? "set" : "clear", (unsigned long long)got,
                    (unsigned long long)want);
            return fail("td_unpack");
        }
    if ((held > 0 && memcmp(vp, want_vals.data(), want_vals.size())) || memcmp(bits.data(), hb.data(), words * 4))
        return fail("td_unpack wrote its inputs (packed values or bits)");
    return true;
}

// A grouped call: `items` cases of one dtype, profile and seed (values out, aligned: the
// inputs of targeted_dropout_many), each its own guarded buffers; item i draws at offset
// off0 + i.
static bool run_grouped(const std::vector<Case>& items) {
    const unsigned sz = dsize(items[0].dt);
    const size_t m = items.size();
    std::vector<std::vector<uint8_t>> wb(m), gb(m);
    std::vector<std::unique_ptr<GuardedBuf>> w(m), g(m), out(m), bits(m);
    std::vector<Sel> sels(m);
    for (size_t i = 0; i < m; i++) {
        const Case& c = items[i];
        const uint64_t numel = c.d0 * c.n;
        fill(wb[i], c.dt, numel, c.kind);
        w[i].reset(new GuardedBuf(numel * sz, 0, 0));
        memcpy(w[i]->data(), wb[i].data(), wb[i].size());
        if (c.grad) {
            fill(gb[i], c.dt, numel, 0);
            g[i].reset(new GuardedBuf(numel * sz, 0, 0));
            memcpy(g[i]->data(), gb[i].data(), gb[i].size());
        }
        out[i].reset(new GuardedBuf(numel * sz, 0, 0xAB));
        bits[i].reset(new GuardedBuf(c.bits ? bits_bytes(numel) : 0, 0, 0xCD));
        sels[i] = Sel{sz, w[i]->data(), c.grad ? g[i]->data() : nullptr, out[i]->data(), nullptr,
                      c.bits ? bits[i]->as<uint32_t>() : nullptr, c.d0, c.n, c.k, c.elem_base, c.draws, true};
    }
    bool ok = select_grouped(kProfiles[items[0].prof], sels);
    for (size_t i = 0; ok && i < m; i++)
        ok = w[i]->check("w") && (!g[i] || g[i]->check("values")) && out[i]->check("out") && bits[i]->check("bits");
    if (!ok) {
        fprintf(stderr, "  grouped call of %zu items, the first: %s\n", m, describe(items[0]).c_str());
        return false;
    }
    for (size_t i = 0; i < m; i++) {
        const Case& c = items[i];
        const std::vector<uint8_t> d = ref_case(c, wb[i]);
        if (!check_case(c, d, c.grad ? gb[i] : wb[i], out[i]->data(), nullptr,
                        c.bits ? bits[i]->as<uint32_t>() : nullptr) ||
            (c.bits && !backward_case(c, d, bits[i]->as<uint32_t>()))) {
            fprintf(stderr, "  (item %zu of a grouped call of %zu)\n", i, m);
            return false;
        }
    }
    return true;
}

static uint64_t pick_k(uint64_t rowlen) {
    const int kk = (int)(rnd() % 6);
    return kk == 0 ? 0 : kk == 1 ? rowlen : kk == 2 ? 1 : kk == 3 ? rowlen - 1 : rnd() % (rowlen + 1);
}

static TdDraws pick_draws(uint64_t draws_from, uint64_t draws_count) {
    TdDraws d;
    const int tk = (int)(rnd() % 5);
    d.seed = rnd();
    d.offset = rnd() % 4 == 0 ? rnd() : rnd() % 100;
    d.threshold = tk == 0 ? 0 : tk == 1 ? TD_ALWAYS : (uint32_t)(rnd() % TD_ALWAYS);
    if (tk == 4) {
        // The threshold at the draw of one element: `(r >> 8) < t` must keep it (a `<=`
        // would drop it, a difference of one draw in 2^24 that random thresholds never see).
        const uint64_t e = draws_from + rnd() % draws_count;
        d.threshold = std::max<uint32_t>(1, draw(e, d.seed, d.offset) >> 8);
    }
    d.pad0 = 0;
    return d;
}

// A random case: row lengths around each path's limits, every dtype, op and output.
static Case random_case() {
    Case c;
    c.prof = (int)(rnd() % 4);
    c.dt = (int)(rnd() % 4);
    c.unit = rnd() % 4 == 0;
    c.values = rnd() % 3 != 0;
    c.grad = c.values && rnd() % 4 == 0;
    c.bits = !c.unit && c.values && rnd() % 3 == 0;
    const unsigned sz = dsize(c.dt);
    const uint64_t pick = rnd() % 10, bm = block_max(sz);
    if (pick < 3) c.n = 1 + rnd() % 40;                   // tiny (and just above)
    else if (pick < 7) c.n = 33 + rnd() % 1500;          // block
    else if (pick < 8) c.n = bm - rnd() % 16;            // block, at its limit
    else c.n = bm + 1 + rnd() % (bm / 2);                // long rows: 1 .. 1.5 blocks' worth
    const uint64_t cap = g_small ? 20000 : c.n > bm ? 100000 : 60000;
    c.d0 = 1 + rnd() % (c.n <= 32 ? 600 : 4);
    if (c.unit) c.d0 = 1 + rnd() % (g_small ? 150 : 700);
    c.d0 = std::max<uint64_t>(1, std::min(c.d0, cap / c.n));
    const uint64_t rowlen = c.unit ? c.d0 : c.n;
    c.k = pick_k(rowlen);
    c.elem_base = c.unit ? 0 : (rnd() % 3 == 0 ? rnd() % 1000003 : (rnd() % 3 == 0 ? (rnd() >> 2) : 0));
    c.draws = pick_draws(c.elem_base, c.unit ? c.d0 : c.d0 * c.n);
    c.kind = (int)(rnd() % 6);
    c.misalign = rnd() % 4 == 0 ? (unsigned)(1 + rnd() % 3) : 0;
    return c;
}

// A random grouped call: 1 .. 2.5 TD_GROUP items (several launches past TD_GROUP), rows
// of 1 .. 1500 (the tiny ones take td_tiny alone), one seed. --small: 1 .. 16 items, or
// TD_GROUP + 1 .. TD_GROUP + 8 (two launches).
static std::vector<Case> random_group() {
    const int prof = (int)(rnd() % 4), dt = (int)(rnd() % 4);
    const size_t m = g_small ? (rnd() % 5 == 0 ? TD_GROUP + 1 + rnd() % 8 : 1 + rnd() % 16)
                             : (rnd() % 3 == 0 ? TD_GROUP + 1 + rnd() % (3 * TD_GROUP / 2) : 1 + rnd() % TD_GROUP);
    const uint64_t seed = rnd(), off0 = rnd() % 1000;
    std::vector<Case> items(m);
    for (size_t i = 0; i < m; i++) {
        Case& c = items[i];
        c.prof = prof;
        c.dt = dt;
        c.unit = false;
        c.values = true;
        c.grad = rnd() % 4 == 0;
        c.bits = rnd() % 3 == 0;
        c.n = rnd() % 8 == 0 ? 1 + rnd() % 32 : 33 + rnd() % 1500;
        c.d0 = std::max<uint64_t>(1, std::min<uint64_t>(1 + rnd() % (c.n <= 32 ? 100 : 4), 3000 / c.n));
        c.k = pick_k(c.n);
        c.elem_base = rnd() % 3 == 0 ? rnd() % 1000003 : 0;
        c.draws = pick_draws(c.elem_base, c.d0 * c.n);
        c.draws.seed = seed;
        c.draws.offset = off0 + i;
        c.kind = (int)(rnd() % 6);
        c.misalign = 0;
    }
    return items;
}

int main(int argc, char** argv) {
    const int st = harness::selftest_main(argc, argv);
    if (st >= 0) return st;
    int cases = 160, min_per_class = 0;
    bool large = false, seeded = false;
    uint64_t seed = harness::fresh_seed();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cases") && i + 1 < argc) cases = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-per-class") && i + 1 < argc) min_per_class = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], nullptr, 0);
            seeded = true;
        } else if (!strcmp(argv[i], "--large")) large = true;
        else if (!strcmp(argv[i], "--small")) g_small = true;
        else {
            fprintf(stderr, "usage: %s [--cases N] [--min-per-class Q] [--seed S] [--small] [--large] [--selftest...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!philox_kat()) {
        fprintf(stderr, "reference Philox fails its known-answer vector\n");
        return 1;
    }
    harness::print_seed(argv[0], seed, seeded);
    g_rng = seed;
    start_watchdog();
    if (large) {
        // Large shapes, once each (dropout at gamma = alpha = 0.5): the paths at sizes the GPU
        // runs, values out with the bit mask and its backward, or the u8 mask.
        struct Shape { int prof, dt; uint64_t d0, n; bool unit, values; };
        const Shape shapes[] = {
            {0, 0, 4096, 4096, false, true}, {0, 2, 4096, 4096, false, false}, {1, 0, 11008, 4096, false, true},
            {0, 2, 4, 1ull << 20, false, true}, {2, 2, 2, 3ull << 20, false, false}, {0, 3, 64, 100003, false, true},
            {0, 1, 131072, 9, false, true}, {3, 3, 4096, 32, false, false}, {1, 0, 4096, 4096, true, true},
            {0, 2, 50000, 7, true, false},
        };
        const uint64_t t0 = (uint64_t)time(nullptr);
        for (const Shape& sh : shapes) {
            Case c{};
            c.prof = sh.prof; c.dt = sh.dt; c.unit = sh.unit; c.values = sh.values; c.grad = false;
            c.bits = !sh.unit && sh.values;
            c.d0 = sh.d0; c.n = sh.n;
            c.k = (uint64_t)floor(0.5 * (double)(sh.unit ? sh.d0 : sh.n));
            c.elem_base = 0;
            c.draws = TdDraws{rnd(), 7, 1u << 23, 0};
            c.kind = 0;
            c.misalign = 0;
            const uint64_t l0 = g_launches;
            const double s0 = mono();
            const bool ok = run_case(c);
            printf("large %s: %llu launches, %.1f s, %s\n", describe(c).c_str(), (unsigned long long)(g_launches - l0),
                   mono() - s0, ok ? "bit-exact" : "FAIL");
            fflush(stdout);
            g_fail += !ok;
        }
        // Pack / unpack of a [4096, 4096] mask (2048 chunks, a block each on h200), and of 3 Mi + 7
        // elements on one multiprocessor (385 chunks over 16 blocks).
        const PackCase pshapes[] = {{0, 4, 4096ull * 4096, 2, false}, {2, 2, (3ull << 20) + 7, 5, true}};
        for (const PackCase& pc : pshapes) {
            const uint64_t l0 = g_launches;
            const double s0 = mono();
            const bool ok = run_pack(pc);
            printf("large %s: %llu launches, %.1f s, %s\n", describe(pc).c_str(), (unsigned long long)(g_launches - l0),
                   mono() - s0, ok ? "bit-exact" : "FAIL");
            fflush(stdout);
            g_fail += !ok;
        }
        printf("driver: %zu large shapes in %llu s, %llu launches (the longest %.1f s, %s), %d failed\n",
               sizeof shapes / sizeof shapes[0] + sizeof pshapes / sizeof pshapes[0],
               (unsigned long long)(time(nullptr) - t0),
               (unsigned long long)g_launches, g_launch_max, g_launch_max_name.c_str(), g_fail);
        return g_fail ? 1 : 0;
    }
    // Classes: dtype x path (weight tiny, block, long; unit), then grouped calls, weight cases
    // with a u8 mask out (td_mask_u8), with an unaligned input (the aligned copy), with the
    // bit mask kept (and the backward from it), then pack / unpack per width. A case may count
    // in several classes.
    enum { kGrouped = 16, kMaskU8, kUnaligned, kBackward, kPack, kClasses = kPack + 3 };
    harness::Quota quota(kClasses, min_per_class);
    std::vector<std::string> names;
    for (int dt = 0; dt < 4; dt++)
        for (const char* p : {"tiny", "block", "long", "unit"}) names.push_back(std::string(kDtype[dt]) + " " + p);
    for (const char* x : {"grouped", "mask-u8", "unaligned", "bits+backward", "pack u16", "pack u32", "pack u64"})
        names.push_back(x);
    int ran = 0, drawn = 0, paths[4] = {0, 0, 0, 0}, groups = 0, items = 0, packs = 0;
    double secs[6] = {0, 0, 0, 0, 0, 0};  // per path, then grouped calls, then pack / unpack
    auto now = mono;
    for (; drawn < cases || (!quota.met() && drawn < 200 * std::max(cases, 100)); drawn++) {
        if (rnd() % 25 == 0) {  // a grouped call (each costs about 15 single cases)
            const std::vector<Case> g = random_group();
            if (!quota.wanted(kGrouped, drawn, cases)) continue;
            quota.add(kGrouped);
            groups++;
            items += (int)g.size();
            ran++;
            const double t0 = now();
            const bool ok = run_grouped(g);
            secs[4] += now() - t0;
            if (!ok) {
                g_fail++;
                fprintf(stderr, "  replay: %s --seed 0x%llx --cases %d --min-per-class %d\n", argv[0],
                        (unsigned long long)seed, cases, min_per_class);
            }
            if (g_fail >= 5) break;
            continue;
        }
        if (rnd() % 8 == 0) {  // pack / unpack (cheap: a few launches of up to 20 chunks)
            const PackCase pc = random_pack();
            const int cls = kPack + (pc.sz == 2 ? 0 : pc.sz == 4 ? 1 : 2);
            if (!quota.wanted(cls, drawn, cases)) continue;
            quota.add(cls);
            packs++;
            ran++;
            const double t0 = now();
            const bool ok = run_pack(pc);
            secs[5] += now() - t0;
            if (!ok) {
                g_fail++;
                fprintf(stderr, "  replay: %s --seed 0x%llx --cases %d --min-per-class %d\n", argv[0],
                        (unsigned long long)seed, cases, min_per_class);
            }
            if (g_fail >= 5) break;
            continue;
        }
        const Case c = random_case();
        const int path = path_of(c);
        const bool selects = c.k > 0 && c.draws.threshold != 0;
        std::vector<int> cls = {c.dt * 4 + path};
        if (!c.unit && !c.values && selects) cls.push_back(kMaskU8);
        if (!c.unit && c.misalign && selects) cls.push_back(kUnaligned);
        if (c.bits) cls.push_back(kBackward);
        bool want = false;
        for (int x : cls) want = want || quota.wanted(x, drawn, cases);
        if (!want) continue;
        for (int x : cls) quota.add(x);
        paths[path]++;
        ran++;
        const double t0 = now();
        const bool ok = run_case(c);
        secs[path] += now() - t0;
        if (getenv("TD_DRIVER_SLOW") && now() - t0 > atof(getenv("TD_DRIVER_SLOW"))) fprintf(stderr, "slow %.2f s: %s\n", now() - t0, describe(c).c_str());
        if (!ok) {
            g_fail++;
            fprintf(stderr, "  replay: %s --seed 0x%llx --cases %d --min-per-class %d\n", argv[0],
                    (unsigned long long)seed, cases, min_per_class);
        }
        if (g_fail >= 5) break;
    }
    printf("driver: %d cases (weight tiny %d, block %d, long %d; unit %d; %d grouped calls of %d tensors; "
           "pack %d), %llu launches, %d failed\n",
           ran, paths[0], paths[1], paths[2], paths[3], groups, items, packs, (unsigned long long)g_launches, g_fail);
    printf("driver: per class: %s\n", quota.report(names).c_str());
    printf("driver: seconds: tiny %.1f, block %.1f, long %.1f, unit %.1f, grouped %.1f, pack %.1f; the longest launch "
           "%.1f s (%s)\n",
           secs[0], secs[1], secs[2], secs[3], secs[4], secs[5], g_launch_max, g_launch_max_name.c_str());
    if (!g_fail && !quota.met()) {
        fprintf(stderr, "driver: a class has fewer than %d cases after %d draws\n", min_per_class, drawn);
        return 1;
    }
    return g_fail ? 1 : 0;
}
