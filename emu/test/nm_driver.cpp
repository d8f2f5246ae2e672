// kernels/nm.cu on the emulator, launched as src/plan/nm.rs plans it (kernel by width and
// register size, grid of min(groups / 256, 32 * SMs) blocks of 256), on random cases against
// a CPU reference written from DESIGN.md ("N:M targeted dropout"). Every buffer is a heap
// allocation of exactly its elements (the views sometimes start one element in, so that the
// vector path's alignment check is exercised), so that the ASan build catches any access
// past a buffer. Any mismatch, emulator report or sanitizer report fails (exit code != 0).
//
//   nm_driver [--cases N] [--seed S]   (a fresh seed per run unless --seed; printed first)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>

#include "harness.h"
#include "reference.h"
#include <utility>
#include <vector>

#include "../../kernels/params.h"
#include "../td_emu.h"

static uint64_t g_rng = 1;
static uint64_t rnd() { return ref::splitmix(g_rng); }

// The draw of flat index e (emu/test/reference.h).
using ref::draw;

static uint64_t get(const uint8_t* p, unsigned size, uint64_t i) {
    uint64_t v = 0;
    memcpy(&v, p + i * size, size);
    return v;
}

struct Case {
    unsigned size;  // 2, 4 or 8 bytes
    uint64_t outer, c, s;
    unsigned n, m;
    uint32_t threshold;
    bool vals, mask, shifted;
    unsigned sms;
    uint64_t seed, offset;
};

static std::string describe(const Case& k) {
    char b[256];
    snprintf(b, sizeof b, "u%u [%llu, %llu, %llu] %u:%u threshold %u vals %d mask %d shifted %d sms %u",
             k.size * 8, (unsigned long long)k.outer, (unsigned long long)k.c, (unsigned long long)k.s, k.n, k.m,
             k.threshold, k.vals, k.mask, k.shifted, k.sms);
    return b;
}

// A random element of `size` bytes: mostly a few magnitudes (ties), signed zeros, NaN, Inf.
static uint64_t element(unsigned size) {
    const uint64_t sign = 1ull << (size * 8 - 1);
    const uint64_t mag_mask = sign - 1;
    uint64_t v;
    switch (rnd() % 8) {
        case 0: v = 0; break;                                 // zero
        case 1: v = (rnd() % 4 + 1) << (size * 8 - 9); break;  // a few magnitudes: ties
        case 2: v = mag_mask; break;                          // a NaN
        default: v = rnd() & mag_mask;
    }
    return v | ((rnd() & 1) ? sign : 0);
}

static bool run(const Case& k) {
    const uint64_t numel = k.outer * k.c * k.s, groups = numel / k.m;
    const unsigned size = k.size, shift = k.shifted ? 1 : 0;
    // Exact-size heap buffers (plus the one-element shift at the front).
    auto buf = [&](uint64_t elems, unsigned esize) { return new uint8_t[(elems + shift) * esize]; };
    uint8_t* w = buf(numel, size);
    uint8_t* v = k.vals ? buf(numel, size) : nullptr;
    uint8_t* out = k.mask ? nullptr : buf(numel, size);
    uint8_t* mask = k.mask ? buf(numel, 1) : nullptr;
    uint8_t* wv = w + shift * size;
    uint8_t* vv = v ? v + shift * size : nullptr;
    uint8_t* ov = out ? out + shift * size : nullptr;
    uint8_t* mv = mask ? mask + shift : nullptr;
    for (uint64_t i = 0; i < numel; i++) {
        const uint64_t x = element(size);
        memcpy(wv + i * size, &x, size);
        if (vv) {
            const uint64_t y = rnd() | 1;  // never zero: a dropped gradient shows
            memcpy(vv + i * size, &y, size);
        }
    }
    unsigned maxm = 4;
    while (maxm < k.m) maxm *= 2;
    char name[32];
    snprintf(name, sizeof name, "td_nm_%s_m%u", size == 2 ? "u16" : size == 4 ? "u32" : "u64", maxm);
    TdNmParams p;
    memset(&p, 0, sizeof p);
    p.groups = groups;
    p.s = k.s;
    p.m = k.m;
    p.targeted = k.m - k.n;
    p.draws.seed = k.seed;
    p.draws.offset = k.offset;
    p.draws.threshold = k.threshold;
    const void* a_w = wv;
    const void* a_v = vv;
    void* a_o = ov;
    void* a_m = mv;
    void* args[5] = {&a_w, &a_v, &a_o, &a_m, &p};
    const uint64_t blocks = std::min<uint64_t>((groups + TD_BLOCK - 1) / TD_BLOCK, (uint64_t)k.sms * 32);
    TdEmuSchedule s = emu::schedule_from_env(rnd());
    s.block_workers = 1 + (uint32_t)(rnd() % 3);
    char err[2048];
    bool ok = true;
    if (td_emu_launch(name, (uint32_t)std::max<uint64_t>(blocks, 1), 1, 1, TD_BLOCK, 1, 1, 0, args, 5, &s, err,
                      sizeof err) != 0) {
        fprintf(stderr, "EMULATOR: %s: %s\n", describe(k).c_str(), err);
        ok = false;
    }
    // The reference: per group, sort (key, j); the first m - n are targeted.
    const uint64_t key_mask = (1ull << (size * 8 - 1)) - 1;
    for (uint64_t g = 0; ok && g < groups; g++) {
        const uint64_t slab = g / k.s, x = g % k.s, base = slab * k.m * k.s + x;
        std::vector<std::pair<uint64_t, unsigned>> order;
        for (unsigned j = 0; j < k.m; j++) order.push_back({get(wv, size, base + j * k.s) & key_mask, j});
        std::sort(order.begin(), order.end());
        std::vector<bool> targeted(k.m, false);
        for (unsigned r = 0; r < k.m - k.n; r++) targeted[order[r].second] = true;
        for (unsigned j = 0; j < k.m; j++) {
            const uint64_t e = base + j * k.s;
            const bool d = targeted[j] && (draw(e, k.seed, k.offset) >> 8) < k.threshold;
            if (mv) {
                if (mv[e] != (d ? 1 : 0)) {
                    fprintf(stderr, "MISMATCH %s: mask at %llu is %u, want %u\n", describe(k).c_str(),
                            (unsigned long long)e, mv[e], d ? 1 : 0);
                    ok = false;
                    break;
                }
            } else {
                const uint64_t want = d ? 0 : get(vv ? vv : wv, size, e);
                const uint64_t got = get(ov, size, e);
                if (got != want) {
                    fprintf(stderr, "MISMATCH %s: out at %llu is %#llx, want %#llx\n", describe(k).c_str(),
                            (unsigned long long)e, (unsigned long long)got, (unsigned long long)want);
                    ok = false;
                    break;
                }
            }
        }
    }
    delete[] w;
    delete[] v;
    delete[] out;
    delete[] mask;
    return ok;
}

int main(int argc, char** argv) {
    unsigned cases = 200;
    uint64_t seed = harness::fresh_seed();
    bool seeded = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cases")) cases = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) {
            seed = strtoull(argv[i + 1], nullptr, 0);
            seeded = true;
        } else {
            fprintf(stderr, "usage: nm_driver [--cases N] [--seed S]\n");
            return 2;
        }
    }
    if (!ref::philox_kat()) {
        fprintf(stderr, "reference Philox fails its known-answer vector\n");
        return 1;
    }
    harness::print_seed(argv[0], seed, seeded);
    g_rng = seed;
    const unsigned sizes[3] = {2, 4, 8};
    const uint64_t strides[5] = {1, 1, 2, 3, 9};
    const unsigned pow2[5] = {2, 4, 8, 16, 32};
    unsigned failed = 0;
    for (unsigned i = 0; i < cases; i++) {
        Case k;
        k.size = sizes[rnd() % 3];
        k.m = 1 + (unsigned)(rnd() % 32);
        if (rnd() % 2) k.m = pow2[rnd() % 5];
        k.n = (unsigned)(rnd() % (k.m + 1));
        k.outer = 1 + rnd() % 9;
        k.c = k.m * (1 + rnd() % 6);
        k.s = strides[rnd() % 5];
        switch (rnd() % 4) {
            case 0: k.threshold = 0; break;
            case 1: k.threshold = TD_ALWAYS; break;
            default: k.threshold = (uint32_t)(rnd() % TD_ALWAYS);
        }
        k.vals = rnd() % 3 == 0;
        k.mask = !k.vals && rnd() % 3 == 0;
        k.shifted = rnd() % 3 == 0;
        k.sms = rnd() % 2 ? 132 : 1;  // one SM: the grid-stride loop takes several groups
        k.seed = rnd();
        k.offset = rnd();
        if (!run(k)) {
            failed++;
            fprintf(stderr, "  replay: %s --seed 0x%llx --cases %u\n", argv[0], (unsigned long long)seed, cases);
        }
    }
    printf("nm_driver: %u cases, %u failed\n", cases, failed);
    return failed ? 1 : 0;
}
