// The library's kernels on the emulator, launched as src/cuda.rs launches them (same kernels,
// grids, shared memory and parameter structs, per device profile), on random cases against a
// CPU reference written from DESIGN.md. Needs no Rust: the sanitizer runs (ASan + UBSan, TSan)
// build this with the emulator (scripts/emu/build.sh) and run it; any mismatch, emulator
// report or sanitizer report fails (exit code != 0).
//
//   driver [--cases N] [--min-per-class Q] [--seed S]
//                                     N random cases (default 160), then more until each
//                                     dtype x path has Q (default 0); a fresh seed per run
//                                     unless --seed (printed first: the replay command)
//   driver --large                    large shapes ([4096, 4096], [4, 2^20], ...), once each
//   driver --selftest[-hang|-asan N|-tsan N]   the emulator's self-tests (harness.h)
//
// Every launch goes through the C ABI td_emu_launch with a schedule that rotates over thread
// order (forward, reverse, random), warp run-ahead (off, on), fibers interleaved at memory
// accesses (every fourth launch) and 1..3 block workers. Every buffer has guard regions
// (harness.h), and the long rows' row groups each their own allocations.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../../kernels/params.h"
#include "../td_emu.h"
#include "harness.h"
#include "reference.h"

using harness::GuardedBuf;

static int g_fail = 0;
static uint64_t g_launches = 0;

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
// Device profiles and the launch plan of src/cuda.rs

struct Profile {
    const char* name;
    uint64_t sms, optin, l2;
};
static const Profile kProfiles[] = {
    {"h200", 132, 232448, 60ull << 20},
    {"sm86", 28, 101376, 6ull << 20},
    {"1sm-small-l2", 1, 232448, 256 << 10},  // long rows take several row groups
    {"64k", 2, 65536, 1 << 20},              // f64 rows of 32 take the block path
};
// The kernels' static shared memory (what cuFuncGetAttribute reports, near enough): tdw_tiny
// a u32 per row, tdw_block the Scratch struct.
static const uint64_t kTinyStatic = 1024, kBlockStatic = 1088;

static uint64_t tiny_smem(uint64_t n, uint64_t size) { return (uint64_t)TD_BLOCK * (n | 1) * size; }
static uint64_t block_smem(uint64_t n, uint64_t size) { return (n + 3) / 4 * 4 * size; }

static TdEmuSchedule next_schedule() {
    const uint64_t c = g_launches++;
    TdEmuSchedule s = emu::schedule_from_env(c);
    if (!getenv("TD_EMU_WORKERS")) s.block_workers = 1 + (uint32_t)(c % 3);
    return s;
}

static bool launch(const char* name, uint32_t gx, uint32_t gy, uint32_t dyn, std::vector<void*> args) {
    char err[2048];
    const TdEmuSchedule s = next_schedule();
    if (td_emu_launch(name, std::max(gx, 1u), std::max(gy, 1u), 1, TD_BLOCK, 1, 1, dyn, args.data(),
                      (uint32_t)args.size(), &s, err, sizeof err) != 0) {
        fprintf(stderr, "EMULATOR: %s (schedule: order %u, run-ahead %u, workers %u)\n", err, s.thread_order,
                s.warp_runahead, s.block_workers);
        return false;
    }
    return true;
}

static const char* wname(unsigned size) { return size == 2 ? "u16" : size == 4 ? "u32" : "u64"; }

// select_rows of src/cuda.rs.
static bool select_rows(const Profile& pf, unsigned size, const void* w, const void* vals, void* out, uint8_t* mask,
                        uint64_t rows, uint64_t n, uint64_t k, uint64_t elem_base, TdDraws draws) {
    if (k == 0 || draws.threshold == 0) {
        if (out) memcpy(out, vals ? vals : w, rows * n * size);
        if (mask) memset(mask, 0, rows * n);
        return true;
    }
    void* nul = nullptr;
    const void* vp = vals;
    TdwRowsParams p = {rows, n, k, elem_base, draws};
    const uint64_t tiny_lim = std::min(pf.optin - kTinyStatic, tiny_smem(TD_TINY_ROW, size));
    const uint64_t block_lim = std::min(pf.optin - kBlockStatic, (uint64_t)TD_BLOCK_ROW_BYTES);
    std::string nm;
    if (n <= TD_TINY_ROW && tiny_smem(n, size) <= tiny_lim) {
        const uint32_t smem = (uint32_t)tiny_smem(n, size);
        const uint32_t grid = (uint32_t)std::min((rows + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 8);
        nm = std::string("tdw_tiny_") + wname(size);
        return launch(nm.c_str(), grid, 1, smem, {&w, vals ? (void*)&vp : (void*)&nul, out ? (void*)&out : (void*)&nul,
                                                  mask ? (void*)&mask : (void*)&nul, &p});
    }
    if (block_smem(n, size) <= block_lim) {
        const uint32_t smem = (uint32_t)block_smem(n, size);
        // Blocks per multiprocessor: by threads (2048 / 256) and by shared memory.
        const uint64_t per_sm = std::max<uint64_t>(1, std::min<uint64_t>(8, 233472 / (smem + kBlockStatic + 1024)));
        const uint32_t grid = (uint32_t)std::min(rows, pf.sms * per_sm);
        nm = std::string("tdw_block_") + wname(size);
        return launch(nm.c_str(), grid, 1, smem, {&w, vals ? (void*)&vp : (void*)&nul, out ? (void*)&out : (void*)&nul,
                                                  mask ? (void*)&mask : (void*)&nul, &p});
    }
    const uint32_t passes = size;
    const uint64_t chunks = (n + TD_LONG_CHUNK - 1) / TD_LONG_CHUNK;
    const uint64_t group = std::max<uint64_t>(1, std::min((pf.l2 / 2) / (n * size), std::min<uint64_t>(rows, 65535)));
    for (uint64_t row0 = 0; row0 < rows; row0 += group) {
        const uint64_t g = std::min(group, rows - row0);
        // The row group's rows, histograms and outputs in their own guarded allocations: the
        // kernels index w, values, out and mask from row 0 of the tensor, so those pointers
        // are the allocations less row0 rows (the histograms are the group's own), and an
        // access outside the group lands in a guard.
        const size_t gb = g * n * size, off = row0 * n * size;
        GuardedBuf wg(gb), vg(vals ? gb : 0), og(out ? gb : 0), mg(mask ? g * n : 0, 0, 0xAB);
        GuardedBuf hist(g * passes * 256 * 4), chunk_hist(g * chunks * 256 * 4, 0, 0xAB);
        memcpy(wg.data(), (const char*)w + off, gb);
        if (vals) memcpy(vg.data(), (const char*)vals + off, gb);
        const void* wb = wg.data() - off;
        const void* vb = vals ? (const void*)(vg.data() - off) : nullptr;
        void* ob = out ? (void*)(og.data() - off) : nullptr;
        uint8_t* mb = mask ? mg.data() - row0 * n : nullptr;
        uint32_t* hist_g = hist.as<uint32_t>();  // (indexed by blockIdx.y: the group's own)
        uint32_t* ch = chunk_hist.as<uint32_t>();
        for (uint32_t pass = 0; pass < passes; pass++) {
            TdwLongHistParams hp = {row0, n, k, pass, 0};
            nm = std::string("tdw_long_hist_") + wname(size);
            if (!launch(nm.c_str(), (uint32_t)chunks, (uint32_t)g, 0, {&wb, &hist_g, &ch, &hp})) return false;
        }
        TdwLongApplyParams ap = {row0, n, k, elem_base, draws};
        const uint32_t* hist_c = hist_g;
        const uint32_t* ch_c = ch;
        nm = std::string("tdw_long_apply_") + wname(size);
        if (!launch(nm.c_str(), (uint32_t)chunks, (uint32_t)g, 0,
                    {&wb, vals ? (void*)&vb : (void*)&nul, out ? (void*)&ob : (void*)&nul,
                     mask ? (void*)&mb : (void*)&nul, &hist_c, &ch_c, &ap}))
            return false;
        if (!wg.check("row group of w") || !vg.check("row group of values") || !og.check("row group of out") ||
            !mg.check("row group of mask") || !hist.check("histograms") || !chunk_hist.check("chunk histograms"))
            return false;
        if (out) memcpy((char*)out + off, og.data(), gb);
        if (mask) memcpy(mask + row0 * n, mg.data(), g * n);
    }
    return true;
}

static const char* kDtype[] = {"f32", "f16", "bf16", "f64"};
static unsigned dsize(int dt) { return dt == 3 ? 8 : dt == 0 ? 4 : 2; }

// launch_scores of src/cuda.rs.
static bool launch_scores(const Profile& pf, int dt, const void* w, void* scores, uint64_t d0, uint64_t n) {
    UnitScoresParams p = {d0, n};
    std::string nm = std::string(n <= TD_TINY_ROW ? "td_unit_scores_tiny_" : "td_unit_scores_block_") + kDtype[dt];
    const uint64_t grid = n <= TD_TINY_ROW ? std::min((d0 + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 8) : std::min(d0, pf.sms * 8);
    return launch(nm.c_str(), (uint32_t)grid, 1, 0, {&w, &scores, &p});
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
    bool unit, values, grad;
    uint64_t d0, n, k, elem_base;
    TdDraws draws;
    int kind;
    unsigned misalign;
};

static std::string describe(const Case& c) {
    char b[512];
    snprintf(b, sizeof b,
             "profile %s %s %s [%llu, %llu] k=%llu elem_base=%llu threshold=%u seed=%llx offset=%llu kind=%d "
             "output=%s%s misalign=%u",
             kProfiles[c.prof].name, kDtype[c.dt], c.unit ? "unit" : "weight", (unsigned long long)c.d0,
             (unsigned long long)c.n, (unsigned long long)c.k, (unsigned long long)c.elem_base, c.draws.threshold,
             (unsigned long long)c.draws.seed, (unsigned long long)c.draws.offset, c.kind,
             c.values ? "values" : "mask", c.grad ? " (backward: values from a gradient)" : "", c.misalign);
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
    GuardedBuf out(c.values ? numel * sz : 0, 0, 0xAB), mask(c.values ? 0 : numel, 0, 0xAB);
    // Reference.
    std::vector<uint8_t> want_drop(numel);
    if (!c.unit) {
        want_drop = ref_select(wb.data(), sz, c.d0, c.n, c.k, c.elem_base, c.draws);
    } else {
        std::vector<uint8_t> scores(c.d0 * (c.dt == 3 ? 8 : 4));
        for (uint64_t u = 0; u < c.d0; u++) {
            if (c.dt == 3) { double s = ref_score<double>(&wb[u * c.n * sz], c.dt, c.n); memcpy(&scores[u * 8], &s, 8); }
            else { float s = ref_score<float>(&wb[u * c.n * sz], c.dt, c.n); memcpy(&scores[u * 4], &s, 4); }
        }
        const std::vector<uint8_t> um = ref_select(scores.data(), c.dt == 3 ? 8 : 4, 1, c.d0, c.k, 0, c.draws);
        for (uint64_t e = 0; e < numel; e++) want_drop[e] = um[e / c.n];
    }
    // The emulated kernels, as src/cuda.rs runs them.
    bool ok = true;
    const void* vals = c.grad ? g.p : nullptr;
    void* outp = c.values ? (void*)out.data() : nullptr;
    const auto guards_hold = [&] {
        return w.b.check("w") && g.b.check("values") && out.check("out") && mask.check("mask");
    };
    uint8_t* maskp = c.values ? nullptr : mask.data();
    if (!c.unit) {
        ok = select_rows(pf, sz, w.p, vals, outp, maskp, c.d0, c.n, c.k, c.elem_base, c.draws);
    } else {
        const unsigned asz = c.dt == 3 ? 8 : 4;
        GuardedBuf umask(c.d0, 0, 0);
        if (c.k > 0 && c.draws.threshold != 0) {
            GuardedBuf scores(c.d0 * asz, 0, 0);
            ok = launch_scores(pf, c.dt, w.p, scores.data(), c.d0, c.n) && scores.check("scores") &&
                 select_rows(pf, asz, scores.data(), nullptr, nullptr, umask.data(), 1, c.d0, c.k, 0, c.draws) &&
                 umask.check("unit mask");
        }
        if (ok) {
            const uint64_t groups = (numel + 3) / 4;
            const uint32_t grid = (uint32_t)std::min((groups + TD_BLOCK - 1) / TD_BLOCK, pf.sms * 16);
            UnitApplyParams p = {numel, c.n};
            void* nul = nullptr;
            const void* v = vals ? vals : (const void*)w.p;
            const uint8_t* um = umask.data();
            const std::string nm = std::string("td_unit_apply_") + wname(sz);
            ok = launch(nm.c_str(), grid, 1, 0,
                        {&v, outp ? (void*)&outp : (void*)&nul, maskp ? (void*)&maskp : (void*)&nul, &um, &p});
        }
    }
    if (ok) ok = guards_hold();
    if (!ok) {
        fprintf(stderr, "  case: %s\n", describe(c).c_str());
        return false;
    }
    const std::vector<uint8_t>& src = c.grad ? gb : wb;
    for (uint64_t e = 0; e < numel; e++) {
        bool bad;
        uint64_t got = 0, want = 0;
        if (c.values) {
            memcpy(&got, out.data() + e * sz, sz);
            if (!want_drop[e]) memcpy(&want, &src[e * sz], sz);
            bad = got != want;
        } else {
            got = mask.data()[e];
            want = want_drop[e];
            bad = got != want;
        }
        if (bad) {
            fprintf(stderr, "MISMATCH %s: element %llu (row %llu, col %llu): got %llx want %llx\n  case: %s\n",
                    c.values ? "values" : "mask", (unsigned long long)e, (unsigned long long)(e / c.n),
                    (unsigned long long)(e % c.n), (unsigned long long)got, (unsigned long long)want,
                    describe(c).c_str());
            return false;
        }
    }
    return true;
}

// A random case: row lengths around each path's limits, every dtype, op and output.
static Case random_case() {
    Case c;
    c.prof = (int)(rnd() % 4);
    c.dt = (int)(rnd() % 4);
    c.unit = rnd() % 4 == 0;
    c.values = rnd() % 3 != 0;
    c.grad = c.values && rnd() % 4 == 0;
    const unsigned sz = dsize(c.dt);
    const uint64_t pick = rnd() % 10;
    const uint64_t block_max = std::min<uint64_t>(TD_BLOCK_ROW_BYTES, kProfiles[c.prof].optin - kBlockStatic) / sz;
    if (pick < 3) c.n = 1 + rnd() % 40;                                       // tiny (and just above)
    else if (pick < 7) c.n = 33 + rnd() % 1500;                              // block
    else if (pick < 8) c.n = block_max - rnd() % 8;                          // block, at its limit
    else c.n = block_max + 1 + rnd() % (2 * TD_LONG_CHUNK + 100);            // long rows
    const uint64_t cap = 60000;
    c.d0 = 1 + rnd() % (c.n <= 32 ? 600 : 4);
    if (c.unit) c.d0 = 1 + rnd() % 700;
    c.d0 = std::max<uint64_t>(1, std::min(c.d0, cap / c.n));
    const uint64_t rowlen = c.unit ? c.d0 : c.n;
    const int kk = (int)(rnd() % 6);
    c.k = kk == 0 ? 0 : kk == 1 ? rowlen : kk == 2 ? 1 : kk == 3 ? rowlen - 1 : rnd() % (rowlen + 1);
    c.elem_base = c.unit ? 0 : (rnd() % 3 == 0 ? rnd() % 1000003 : (rnd() % 3 == 0 ? (rnd() >> 2) : 0));
    const int tk = (int)(rnd() % 5);
    c.draws.seed = rnd();
    c.draws.offset = rnd() % 4 == 0 ? rnd() : rnd() % 100;
    c.draws.threshold = tk == 0 ? 0 : tk == 1 ? TD_ALWAYS : (uint32_t)(rnd() % TD_ALWAYS);
    if (tk == 4) {
        // The threshold at the draw of one element: `(r >> 8) < t` must keep it (a `<=`
        // would drop it, a difference of one draw in 2^24 that random thresholds never see).
        const uint64_t e = (c.unit ? 0 : c.elem_base) + rnd() % (c.unit ? c.d0 : c.d0 * c.n);
        c.draws.threshold = std::max<uint32_t>(1, draw(e, c.draws.seed, c.draws.offset) >> 8);
    }
    c.draws.pad0 = 0;
    c.kind = (int)(rnd() % 6);
    c.misalign = rnd() % 4 == 0 ? (unsigned)(1 + rnd() % 3) : 0;
    return c;
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
        else {
            fprintf(stderr, "usage: %s [--cases N] [--min-per-class Q] [--seed S] [--large] [--selftest...]\n",
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
    if (large) {
        // Large shapes, once each (dropout at gamma = alpha = 0.5, and a backward): the paths
        // at sizes the GPU runs.
        struct Shape { int prof, dt; uint64_t d0, n; bool unit; };
        const Shape shapes[] = {
            {0, 0, 4096, 4096, false}, {0, 2, 4096, 4096, false}, {1, 0, 11008, 4096, false},
            {0, 2, 4, 1ull << 20, false}, {2, 2, 2, 3ull << 20, false}, {0, 3, 64, 100003, false},
            {0, 1, 131072, 9, false}, {3, 3, 4096, 32, false}, {1, 0, 4096, 4096, true},
            {0, 2, 50000, 7, true},
        };
        const uint64_t t0 = (uint64_t)time(nullptr);
        for (const Shape& sh : shapes) {
            Case c{};
            c.prof = sh.prof; c.dt = sh.dt; c.unit = sh.unit; c.values = true; c.grad = false;
            c.d0 = sh.d0; c.n = sh.n;
            c.k = (uint64_t)floor(0.5 * (double)(sh.unit ? sh.d0 : sh.n));
            c.elem_base = 0;
            c.draws = TdDraws{rnd(), 7, 1u << 23, 0};
            c.kind = 0;
            c.misalign = 0;
            const bool ok = run_case(c);
            printf("large %s: %s\n", describe(c).c_str(), ok ? "bit-exact" : "FAIL");
            fflush(stdout);
            g_fail += !ok;
        }
        printf("driver: %zu large shapes in %llu s, %llu launches, %d failed\n", sizeof shapes / sizeof shapes[0],
               (unsigned long long)(time(nullptr) - t0), (unsigned long long)g_launches, g_fail);
        return g_fail ? 1 : 0;
    }
    // Classes: dtype x path (weight tiny, block, long; unit).
    int paths[4] = {0, 0, 0, 0};
    harness::Quota quota(16, min_per_class);
    std::vector<std::string> names;
    for (int dt = 0; dt < 4; dt++)
        for (const char* p : {"tiny", "block", "long", "unit"}) names.push_back(std::string(kDtype[dt]) + " " + p);
    int ran = 0, drawn = 0;
    for (; drawn < cases || (!quota.met() && drawn < 200 * std::max(cases, 100)); drawn++) {
        const Case c = random_case();
        const unsigned sz = dsize(c.dt);
        const uint64_t tl = std::min(kProfiles[c.prof].optin - kTinyStatic, tiny_smem(TD_TINY_ROW, sz));
        const uint64_t rowlen = c.unit ? c.d0 : c.n;
        const unsigned rsz = c.unit ? (c.dt == 3 ? 8 : 4) : sz;
        const uint64_t bl = std::min<uint64_t>(TD_BLOCK_ROW_BYTES, kProfiles[c.prof].optin - kBlockStatic);
        const int path = c.unit ? 3 : rowlen <= 32 && tiny_smem(rowlen, rsz) <= tl ? 0 : block_smem(rowlen, rsz) <= bl ? 1 : 2;
        if (!quota.wanted(c.dt * 4 + path, drawn, cases)) continue;
        quota.add(c.dt * 4 + path);
        paths[path]++;
        ran++;
        if (!run_case(c)) {
            g_fail++;
            fprintf(stderr, "  replay: %s --seed 0x%llx --cases %d --min-per-class %d\n", argv[0],
                    (unsigned long long)seed, cases, min_per_class);
        }
        if (g_fail >= 5) break;
    }
    printf("driver: %d cases (weight tiny %d, block %d, long %d; unit %d), %llu launches, %d failed\n", ran,
           paths[0], paths[1], paths[2], paths[3], (unsigned long long)g_launches, g_fail);
    printf("driver: per dtype x path: %s\n", quota.report(names).c_str());
    if (!g_fail && !quota.met()) {
        fprintf(stderr, "driver: a dtype x path has fewer than %d cases after %d draws\n", min_per_class, drawn);
        return 1;
    }
    return g_fail ? 1 : 0;
}
