// The v5 kernels (kernels/weight_v5.cu) on the emulator against a CPU reference written from
// DESIGN.md: the block and tiny-row paths on every width (u16 for f16 and bf16, u32, u64) with and without
// the bit mask, the values of a gradient (the recomputing backward), shards (elem_base), the
// grouped call (many tensors per launch, more than TD_GROUP of them: several launches) and the
// bit-mask backward. Needs no Rust and no GPU; built by scripts/emu/build.sh with the
// sanitizers (ASan + UBSan, TSan) like emu/test/driver.cpp.
//
//   v5_driver [--cases N] [--seed S] [--large]
//
// Every launch goes through td_emu_launch with a schedule that rotates over thread order,
// warp run-ahead and 1..3 block workers. Buffers are exact-size allocations (ASan sees the
// end of each), outputs start as garbage (every element must be written).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "../../kernels/params.h"
#include "../td_emu.h"

static int g_fail = 0;
static uint64_t g_launches = 0;
static uint64_t g_rng = 1;
static uint64_t rnd() {  // splitmix64
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rnd01() { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }

// ---------------------------------------------------------------------------------------
// Reference (DESIGN.md; shares nothing with the kernels)

static void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; round++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n1 = (uint32_t)p1;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1, n3 = (uint32_t)p0;
        c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}
static uint32_t draw(uint64_t e, uint64_t seed, uint64_t offset) {
    const uint64_t g = e / 4;
    uint32_t c[4] = {(uint32_t)g, (uint32_t)(g >> 32), (uint32_t)offset, (uint32_t)(offset >> 32)};
    philox(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    return c[e % 4];
}
static bool philox_kat() {
    uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    philox(c, 0xa4093822, 0x299f31d0);
    return c[0] == 0xd16cfe09 && c[1] == 0x94fdcceb && c[2] == 0x5001e420 && c[3] == 0x24126ea1;
}

static uint64_t get(const std::vector<uint8_t>& b, unsigned sz, uint64_t i) {
    uint64_t x = 0;
    memcpy(&x, &b[i * sz], sz);
    return x;
}

// Dropped flags of weight dropout over rows of n elements of width sz: the k smallest
// (magnitude bits, index) of each row targeted; a targeted element with draw index
// elem_base + flat index dropped when (r >> 8) < threshold (TD_ALWAYS: always, 0: never).
static std::vector<uint8_t> ref_dropped(const std::vector<uint8_t>& w, unsigned sz, uint64_t rows, uint64_t n,
                                        uint64_t k, uint64_t elem_base, uint64_t seed, uint64_t offset,
                                        uint32_t threshold) {
    const uint64_t km = sz == 2 ? 0x7fffull : sz == 4 ? 0x7fffffffull : 0x7fffffffffffffffull;
    std::vector<uint8_t> d(rows * n, 0);
    std::vector<std::pair<uint64_t, uint64_t>> keys(n);
    for (uint64_t r = 0; r < rows; r++) {
        for (uint64_t i = 0; i < n; i++) keys[i] = {get(w, sz, r * n + i) & km, i};
        std::sort(keys.begin(), keys.end());
        for (uint64_t j = 0; j < k; j++) {
            const uint64_t e = r * n + keys[j].second;
            d[e] = threshold == (uint32_t)TD_ALWAYS ||
                   (threshold != 0 && (draw(elem_base + e, seed, offset) >> 8) < threshold);
        }
    }
    return d;
}

// Raw bits of width sz: kinds 0 randn, 1 few values (ties), 2 edge values (+-0, subnormal,
// Inf, NaN, max), 3 one value, 4 +-0 only, 5 30% zeros.
static void fill(std::vector<uint8_t>& buf, unsigned sz, uint64_t numel, int kind) {
    buf.assign(numel * sz, 0);
    auto from_d = [&](double v) -> uint64_t {
        if (sz == 8) { uint64_t b; memcpy(&b, &v, 8); return b; }
        float f = (float)v;
        uint32_t b;
        memcpy(&b, &f, 4);
        return sz == 4 ? b : b >> 16;
    };
    auto randn = [&]() {
        double u1 = std::max(rnd01(), 1e-300), u2 = rnd01();
        return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
    };
    const uint64_t top = 1ull << (8 * sz - 1);
    const uint64_t expmask = sz == 2 ? 0x7f80 : sz == 4 ? 0x7f800000ull : 0x7ff0000000000000ull;
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

// ---------------------------------------------------------------------------------------
// Exact-size, 16-byte aligned device stand-ins (the v5 kernels need 16-byte aligned tensors).

struct Mem {
    void* p = nullptr;
    size_t bytes = 0;
    explicit Mem(size_t b, int fillbyte) : bytes(b) {
        if (b == 0) return;
        if (posix_memalign(&p, 16, b) != 0) { fprintf(stderr, "out of memory\n"); exit(2); }
        memset(p, fillbyte, b);
    }
    Mem(const Mem&) = delete;
    Mem& operator=(const Mem&) = delete;
    ~Mem() { free(p); }
};

static const char* wname(unsigned sz) { return sz == 2 ? "u16" : sz == 4 ? "u32" : "u64"; }

// The block size the host picks: the smallest of 64 .. 1024 threads whose TD_NV vectors per
// thread hold the longest row (a row that does not start on a vector boundary may span one
// vector more); 0 when none does.
static unsigned block_for(unsigned sz, uint64_t max_n) {
    const uint64_t ve = 16 / sz;
    const uint64_t nv = max_n % ve == 0 ? max_n / ve : (max_n + 2 * ve - 2) / ve;
    for (unsigned t = 64; t <= TD_MAX_THREADS; t *= 2)
        if ((uint64_t)t * TD_NV >= nv) return t;
    return 0;
}

static void round_keys(uint64_t seed, uint32_t* keys) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        keys[2 * i] = k0;
        keys[2 * i + 1] = k1;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

static bool launch(const std::string& name, uint32_t grid, uint32_t block, std::vector<void*> args) {
    char err[2048];
    const uint64_t c = g_launches++;
    TdEmuSchedule s = emu::schedule_from_env(c);
    if (!getenv("TD_EMU_WORKERS")) s.block_workers = 1 + (uint32_t)(c % 3);
    if (td_emu_launch(name.c_str(), grid, 1, 1, block, 1, 1, 0, args.data(), (uint32_t)args.size(), &s, err,
                      sizeof err) != 0) {
        fprintf(stderr, "EMULATOR: %s (schedule: order %u, run-ahead %u, workers %u)\n", err, s.thread_order,
                s.warp_runahead, s.block_workers);
        return false;
    }
    return true;
}

// One tensor of a call.
struct Item {
    unsigned sz;
    uint64_t rows, n, k, elem_base, offset;
    uint32_t threshold;
    int kind;
    bool vals, out, bits;
    std::vector<uint8_t> w, g;  // host bits
    Mem *dw = nullptr, *dg = nullptr, *dout = nullptr, *dbits = nullptr;
};

static std::string describe(const Item& it, uint64_t seed) {
    char b[400];
    snprintf(b, sizeof b, "%s [%llu, %llu] k=%llu elem_base=%llu threshold=%u seed=%llx offset=%llu kind=%d%s%s%s",
             wname(it.sz), (unsigned long long)it.rows, (unsigned long long)it.n, (unsigned long long)it.k,
             (unsigned long long)it.elem_base, it.threshold, (unsigned long long)seed,
             (unsigned long long)it.offset, it.kind, it.vals ? " vals" : "", it.out ? " out" : "",
             it.bits ? " bits" : "");
    return b;
}

static TdSeg seg_of(const Item& it) {
    TdSeg s;
    memset(&s, 0, sizeof s);
    s.w = (uint64_t)(uintptr_t)it.dw->p;
    s.vals = it.vals ? (uint64_t)(uintptr_t)it.dg->p : 0;
    s.out = it.out ? (uint64_t)(uintptr_t)it.dout->p : 0;
    s.bits = it.bits ? (uint64_t)(uintptr_t)it.dbits->p : 0;
    s.elem_base = it.elem_base;
    s.offset = it.offset;
    s.n = (uint32_t)it.n;
    s.k = (uint32_t)it.k;
    s.threshold = it.threshold;
    return s;
}

// The long-row kernels' shape, as src/plan/weight.rs's long_shape: tiles per row, candidates
// per row at most, count / candidate passes.
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
    int log_cap = 0;
    while ((1ull << log_cap) < cap) log_cap++;
    uint64_t j = 1;
    while (n > cap && (cw > 11 * j ? cw - 11 * j : 0) > (uint64_t)log_cap) j++;
    return {(vectors + tile - 1) / tile, (uint32_t)cap, (uint32_t)(j + 1)};
}

// One tensor of long rows as the library launches it: the count / candidate passes, the
// resolve, the output pass (only the output pass at k = n), with exact-size scratch
// buffers (hist and state zeroed, the candidates garbage). The grid is capped at `blocks`
// so that blocks take several tiles, across rows.
static bool launch_long(Item& it, uint64_t seed, uint32_t blocks) {
    const LongShape sh = long_shape(it.sz, it.n);
    TdLongParams p;
    memset(&p, 0, sizeof p);
    round_keys(seed, p.keys);
    p.rows = it.rows;
    p.chunks = sh.chunks;
    p.cap = sh.cap;
    p.passes = sh.passes;
    p.seg = seg_of(it);
    const uint32_t grid = (uint32_t)std::min<uint64_t>(it.rows * sh.chunks, blocks);
    const std::string w = wname(it.sz);
    Mem state(it.rows * sh.passes * TD_LONG_STATE_BYTES, 0);
    void* sp = state.p;
    if (it.k < it.n) {
        Mem hist(it.rows * (sh.passes - 1) * TD_RADIX_BINS * 4, 0);
        Mem cand(it.rows * sh.cap * (it.sz == 8 ? 16 : 8), 0xEE);
        void* hp = hist.p;
        void* cp = cand.p;
        for (uint32_t pass = 0; pass < sh.passes; pass++) {
            p.pass = pass;
            if (!launch("td_long_count_" + w, grid, TD_LONG_THREADS, {&hp, &sp, &cp, &p})) return false;
        }
        if (!launch("td_long_resolve_" + w, (uint32_t)it.rows, TD_LONG_THREADS, {&sp, &cp, &p})) return false;
    }
    return launch("td_long_apply_" + w, grid, TD_LONG_THREADS, {&sp, &p});
}

// Launches the items (all of one width) as the library would: one tensor of rows of at most
// TD_TINY_ROW on the tiny kernel, everything else in launches of at most TD_GROUP segments,
// the table by value.
static bool launch_items(std::vector<Item>& items, uint64_t seed) {
    const unsigned sz = items[0].sz;
    if (items.size() == 1 && items[0].n > TD_TINY_ROW && block_for(sz, items[0].n) == 0) {
        // The library skips the selection (a copy) at k = 0 or threshold 0.
        Item& it = items[0];
        if (it.k == 0 || it.threshold == 0) return true;
        return launch_long(it, seed, 1 + (uint32_t)(rnd() % 7));
    }
    if (items.size() == 1 && items[0].n <= TD_TINY_ROW) {
        TdTinyParams p;
        memset(&p, 0, sizeof p);
        round_keys(seed, p.keys);
        p.rows = items[0].rows;
        p.seg = seg_of(items[0]);
        const unsigned t = sz == 8 ? 128 : 256;
        // At most 5 blocks, so that the grid loops over the tiles of the larger cases.
        const uint32_t grid = (uint32_t)std::min<uint64_t>((p.rows + t - 1) / t, 5);
        return launch(std::string("td_tiny_") + wname(sz) + "_t" + std::to_string(t), grid, t, {&p});
    }
    for (size_t g0 = 0; g0 < items.size(); g0 += TD_GROUP) {
        const size_t g1 = std::min(items.size(), g0 + (size_t)TD_GROUP);
        TdBlockParams p;
        memset(&p, 0, sizeof p);
        round_keys(seed, p.keys);
        uint32_t total = 0;
        uint64_t max_n = 0;
        for (size_t i = g0; i < g1; i++) {
            Item& it = items[i];
            TdSeg& s = p.seg[p.nseg++];
            s = seg_of(it);
            s.first_block = total;
            total += (uint32_t)it.rows;
            max_n = std::max(max_n, it.n);
        }
        const unsigned t = block_for(sz, max_n);
        if (t == 0) { fprintf(stderr, "no block size for n = %llu\n", (unsigned long long)max_n); return false; }
        const std::string name = std::string("td_block_") + wname(sz) + "_t" + std::to_string(t);
        if (!launch(name, total, t, {&p})) return false;
    }
    return true;
}

// Checks the outputs of each item against the reference; then the backward from the bit mask.
static bool check_items(std::vector<Item>& items, uint64_t seed, const char* what) {
    for (size_t i = 0; i < items.size(); i++) {
        Item& it = items[i];
        if (it.n > TD_TINY_ROW && block_for(it.sz, it.n) == 0 && (it.k == 0 || it.threshold == 0)) continue;
        const uint64_t numel = it.rows * it.n;
        const std::vector<uint8_t> d =
            ref_dropped(it.w, it.sz, it.rows, it.n, it.k, it.elem_base, seed, it.offset, it.threshold);
        if (it.out) {
            const uint8_t* got = (const uint8_t*)it.dout->p;
            for (uint64_t e = 0; e < numel; e++) {
                const uint64_t src = get(it.vals ? it.g : it.w, it.sz, e);
                const uint64_t want = d[e] ? 0 : src;
                uint64_t have = 0;
                memcpy(&have, got + e * it.sz, it.sz);
                if (have != want) {
                    fprintf(stderr, "MISMATCH %s item %zu: %s: element %llu got %llx want %llx (input %llx)\n", what, i,
                            describe(it, seed).c_str(), (unsigned long long)e, (unsigned long long)have,
                            (unsigned long long)want, (unsigned long long)get(it.w, it.sz, e));
                    return false;
                }
            }
        }
        if (it.bits) {
            const uint32_t* m = (const uint32_t*)it.dbits->p;
            for (uint64_t e = 0; e < numel; e++)
                if (((m[e / 32] >> (e % 32)) & 1) != d[e]) {
                    fprintf(stderr, "MISMATCH %s item %zu bit mask: %s: element %llu got %u want %u\n", what, i,
                            describe(it, seed).c_str(), (unsigned long long)e, (m[e / 32] >> (e % 32)) & 1, d[e]);
                    return false;
                }
            // The backward from this mask on a fresh gradient.
            std::vector<uint8_t> g;
            fill(g, it.sz, numel, 0);
            Mem dg(numel * it.sz, 0), dout(numel * it.sz, 0xAB);
            memcpy(dg.p, g.data(), g.size());
            TdBwdParams bp = {numel};
            const void* gp = dg.p;
            void* op = dout.p;
            const uint32_t* mp = m;
            const uint64_t nvec = numel / (16 / it.sz);
            const uint32_t grid = (uint32_t)std::max<uint64_t>(1, std::min<uint64_t>((nvec + TD_BLOCK - 1) / TD_BLOCK, 64));
            if (!launch(std::string("td_bwd_") + wname(it.sz), grid, TD_BLOCK, {&gp, &op, &mp, &bp})) return false;
            for (uint64_t e = 0; e < numel; e++) {
                const uint64_t want = d[e] ? 0 : get(g, it.sz, e);
                uint64_t have = 0;
                memcpy(&have, (const uint8_t*)dout.p + e * it.sz, it.sz);
                if (have != want) {
                    fprintf(stderr, "MISMATCH %s item %zu backward: %s: element %llu got %llx want %llx\n", what, i,
                            describe(it, seed).c_str(), (unsigned long long)e, (unsigned long long)have,
                            (unsigned long long)want);
                    return false;
                }
            }
        }
    }
    return true;
}

// A random item of width sz with rows of at most max_n.
static Item random_item(unsigned sz, uint64_t max_n, uint64_t max_elems, bool tie_heavy) {
    Item it;
    it.sz = sz;
    const uint64_t pick = rnd() % 10;
    if (pick < 4) it.n = 1 + rnd() % 40;
    else if (pick < 8) it.n = 1 + rnd() % std::min<uint64_t>(max_n, 3000);
    else it.n = max_n - rnd() % (max_n / 4 + 1);
    it.rows = it.n <= TD_TINY_ROW ? 1 + rnd() % 2000 : 1 + rnd() % 9;
    it.rows = std::max<uint64_t>(1, std::min(it.rows, max_elems / it.n));
    const int kk = (int)(rnd() % 6);
    it.k = kk == 0 ? 0 : kk == 1 ? it.n : kk == 2 ? 1 : kk == 3 ? it.n - 1 : (uint64_t)floor(rnd01() * it.n);
    const int tk = (int)(rnd() % 5);
    it.threshold = tk == 0 ? 0 : tk == 1 ? (uint32_t)TD_ALWAYS : (uint32_t)(rnd() % TD_ALWAYS);
    it.elem_base = rnd() % 3 == 0 ? rnd() % 1000003 : (rnd() % 4 == 0 ? (rnd() >> 2) : 0);
    it.offset = rnd() % 4 == 0 ? rnd() : rnd() % 100;
    it.kind = tie_heavy ? (int)(1 + rnd() % 4) : (int)(rnd() % 6);
    it.vals = rnd() % 4 == 0;
    it.out = rnd() % 8 != 0;
    it.bits = !it.out || rnd() % 2 == 0;
    return it;
}

static void upload(Item& it) {
    const uint64_t numel = it.rows * it.n;
    fill(it.w, it.sz, numel, it.kind);
    it.dw = new Mem(numel * it.sz, 0);
    memcpy(it.dw->p, it.w.data(), it.w.size());
    if (it.vals) {
        fill(it.g, it.sz, numel, 0);
        it.dg = new Mem(numel * it.sz, 0);
        memcpy(it.dg->p, it.g.data(), it.g.size());
    }
    if (it.out) it.dout = new Mem(numel * it.sz, 0xAB);
    if (it.bits) it.dbits = new Mem((numel + 31) / 32 * 4, 0xCD);
}

static void release(std::vector<Item>& items) {
    for (auto& it : items) {
        delete it.dw;
        delete it.dg;
        delete it.dout;
        delete it.dbits;
    }
}

static bool run(std::vector<Item> items, uint64_t seed, const char* what) {
    for (auto& it : items) upload(it);
    bool ok = launch_items(items, seed) && check_items(items, seed, what);
    release(items);
    return ok;
}

int main(int argc, char** argv) {
    int cases = 120;
    bool large = false;
    uint64_t seed0 = 0x5eed5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cases") && i + 1 < argc) cases = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed0 = strtoull(argv[++i], nullptr, 0);
        else if (!strcmp(argv[i], "--large")) large = true;
        else {
            fprintf(stderr, "usage: %s [--cases N] [--seed S] [--large]\n", argv[0]);
            return 2;
        }
    }
    if (!philox_kat()) {
        fprintf(stderr, "reference Philox fails its known-answer vector\n");
        return 1;
    }
    g_rng = seed0;
    const unsigned widths[3] = {2, 4, 8};
    int singles = 0, groups = 0, longs = 0;
    for (int c = 0; c < cases && g_fail < 5; c++) {
        const unsigned sz = widths[rnd() % 3];
        // The longest row a block holds: TD_MAX_THREADS * TD_NV vectors, less one for a row
        // that starts mid-vector.
        const uint64_t ve = 16 / sz, max_n = (uint64_t)TD_MAX_THREADS * TD_NV * ve - ve;
        const uint64_t cap = large ? 300000 : 40000;
        const uint64_t seed = rnd();
        if (c % 5 == 2) {
            // Long rows: past what a block holds, up to 2.5 times that, a few rows; tie-heavy
            // data (one value, +-0, few values) every other case, which takes the count
            // passes past the first digit.
            Item it = random_item(sz, max_n, 1ull << 40, c % 10 == 7);
            it.n = max_n + 1 + rnd() % (large ? 3 * max_n / 2 : max_n / 8);
            it.rows = 1 + rnd() % (large ? 6 : 3);
            const int kk = (int)(rnd() % 6);
            it.k = kk == 0 ? 0 : kk == 1 ? it.n : kk == 2 ? 1 : kk == 3 ? it.n - 1 : (uint64_t)floor(rnd01() * it.n);
            std::vector<Item> one = {it};
            if (!run(one, seed, "long")) g_fail++;
            longs++;
        } else if (c % 5 == 4) {
            // A grouped call: up to 2.5 x TD_GROUP tensors, short rows, varied k and alpha.
            std::vector<Item> items;
            const int m = 1 + (int)(rnd() % (5 * TD_GROUP / 2));
            for (int i = 0; i < m; i++) items.push_back(random_item(sz, std::min<uint64_t>(max_n, 700), 4000, false));
            const uint64_t off0 = rnd() % 1000;
            for (int i = 0; i < m; i++) items[i].offset = off0 + i;  // item i draws at offset + i
            if (!run(items, seed, "grouped")) g_fail++;
            groups++;
        } else {
            std::vector<Item> one = {random_item(sz, std::min(max_n, cap), cap, c % 7 == 3)};
            if (!run(one, seed, "single")) g_fail++;
            singles++;
        }
    }
    printf("v5_driver: %d single-tensor cases, %d long-row cases, %d grouped calls, %llu launches, %d failed\n",
           singles, longs, groups, (unsigned long long)g_launches, g_fail);
    return g_fail ? 1 : 0;
}
