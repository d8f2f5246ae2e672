// The CUDA execution model on the CPU: every CUDA thread of a block is a fiber with its own
// stack, switched at every barrier and every warp intrinsic, so that the threads of a block
// really interleave between barriers; blocks run concurrently on OS worker threads.
//
// What is checked (each failure names the kernel, block and thread):
// - a barrier that not every thread of the block reaches (a thread exited, or waits at a
//   warp intrinsic), or threads waiting at different __syncthreads call sites;
// - a warp intrinsic whose mask names a lane that exited, does not exist, or waits elsewhere
//   (a barrier, another intrinsic or call site), or that the calling lane is not part of;
// - dynamic shared memory: garbage at block start; under ASan the bytes past the launch's
//   size are poisoned (a read or write there is reported), otherwise a canary there is
//   checked after the block (a write is reported; a read sees garbage);
// - static __shared__ variables get garbage at block start (found through the symbol table,
//   see poison_static_shared);
// - a block that makes no progress for the timeout: report and exit(124), never a hang.
// Schedules: threads in forward, reverse or random order; warps run one after another up to
// their next barrier (run-ahead) or all threads step by step; blocks handed out in the same
// order to several workers.
//
// Sanitizers: under ThreadSanitizer this file is compiled without instrumentation (its own
// bookkeeping is ordered by the fiber switches, which TSan does not see as synchronisation);
// it tells TSan about the fibers and gives happens-before edges exactly where CUDA does:
// launch start and end, __syncthreads, __syncwarp. Under AddressSanitizer it announces every
// stack switch.
#include "td_emu.h"
#include "cuda_emu.h"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <elf.h>
#include <link.h>
#include <fcntl.h>
#include <mutex>
#include <sys/mman.h>
#include <thread>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

extern "C" {
// The anchor of this executable's TLS block (see find_static_shared).
thread_local char td_emu_tls_anchor;
}

// Fiber switch. On x86-64 a few instructions (callee-saved registers and the stack pointer;
// glibc's swapcontext makes a system call per switch, and ASan's interceptor of it clears the
// shadow of the whole target stack each time); elsewhere ucontext.
#if defined(__x86_64__)
#define EMU_ASM_SWITCH 1
extern "C" void td_emu_switch(void** save_sp, void* new_sp);
extern "C" void td_emu_fiber_entry();
asm(R"(
    .text
    .globl td_emu_switch
    .type td_emu_switch,@function
td_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size td_emu_switch,.-td_emu_switch
    .globl td_emu_fiber_entry
    .type td_emu_fiber_entry,@function
td_emu_fiber_entry:
    movq %r12, %rdi
    call td_emu_fiber_start
    ud2
    .size td_emu_fiber_entry,.-td_emu_fiber_entry
)");
#endif

namespace emu {

namespace {
thread_local const ThreadIdx* g_idx = nullptr;
}
const ThreadIdx* idx() {
    if (!g_idx) {
        fprintf(stderr, "td_emu: threadIdx / blockIdx read outside a kernel launch\n");
        abort();
    }
    return g_idx;
}

namespace {

enum class St { Ready, Barrier, Warp, Done };
enum WarpKind { kShfl = 0, kBallot = 1, kSyncwarp = 2, kMatch = 3 };

struct Thr {
    ThreadIdx idx;
    unsigned lin = 0;
    St st = St::Ready;
    // The pending barrier or warp intrinsic.
    int wkind = 0, shkind = 0, arg = 0, width = 32, pred = 0, barop = -1;
    unsigned mask = 0;
    unsigned long long val = 0, res = 0;
    Site site{"", 0};
#ifdef EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    char* stack = nullptr;
    void* tsan_fiber = nullptr;
    void* asan_fake = nullptr;
    // Traffic counting: how often this lane has executed each global-access site since its
    // warp last converged (the instruction instance of an access is (site, occurrence)).
    struct Occ {
        uintptr_t pc;
        uint32_t n, gen;
    };
    Occ occ[16] = {};
    uint32_t occ_gen = 1, occ_spill = 0;
    // TSan: the parity of the barrier / __syncwarp generation this thread waits at.
    int bar_parity = 0, warp_parity = 0;
};

// One global access of a lane, for the coalescing count: its instruction instance and the
// 32-byte sector it touched.
struct Rec {
    uintptr_t pc;
    uint32_t occ, store;
    uint64_t sector;
    bool operator<(const Rec& o) const {
        if (pc != o.pc) return pc < o.pc;
        if (occ != o.occ) return occ < o.occ;
        if (store != o.store) return store < o.store;
        return sector < o.sector;
    }
    bool operator==(const Rec& o) const {
        return pc == o.pc && occ == o.occ && store == o.store && sector == o.sector;
    }
};

struct Launch;
struct StaticShared;

// One worker: runs blocks one at a time on its fibers.
struct Worker {
    Launch* L = nullptr;
    std::vector<Thr> th;
    char* stacks = nullptr;
    size_t stack_size = 0, map_size = 0;
#ifdef EMU_ASM_SWITCH
    void* sched_sp = nullptr;
#else
    ucontext_t sched;
#endif
    void* sched_tsan = nullptr;
    const void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
    uint3 block{0, 0, 0};
    Thr* cur = nullptr;
    int bar_arrived = 0, done = 0;
    // TSan sync addresses: one per barrier generation parity, per warp and __syncwarp
    // generation parity (a fiber that is resumed late acquires only its own generation's
    // releases, not those of the fibers that already ran on to the next barrier).
    int bar_sync[2] = {}, warp_sync[32][2] = {};
    unsigned bar_gen = 0, warp_gen[32] = {};
    int start_sync = 0, end_sync = 0;
    // The access hook: the ranges that are not global memory (this worker's fiber stacks,
    // its thread-local storage, which holds the __shared__ variables), what to do at an
    // access, the per-warp access records and the counted traffic.
    uintptr_t stk_lo = 0, stk_span = 0, thr_lo = 0, thr_span = 0;
    uintptr_t tls_lo[8] = {}, tls_span[8] = {};
    int ntls = 0;
    // The red zones of the static __shared__ variables in this thread (absolute, sorted).
    struct Zone {
        uintptr_t lo, hi;
        const StaticShared* var;
    };
    std::vector<Zone> zones;
    bool count = false, interleave = false, guards = false;
    std::vector<Rec> recs[32];
    TdEmuTraffic traffic{};
    std::atomic<unsigned long long> progress{0};
    std::atomic<const Thr*> running{nullptr};
    bool failed = false;
    std::string err;
    uint64_t rng = 0;
};

struct Launch {
    const char* name;
    dim3 grid, block;
    unsigned nthreads, dyn;
    const std::function<void()>* body;
    TdEmuSchedule s;
    std::vector<unsigned> order;  // block dispensing order (linear ids)
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::string err;
    TdEmuTraffic traffic{};
};

__attribute__((tls_model("initial-exec"))) thread_local Worker* t_worker = nullptr;
// The CUDA thread running on this OS thread (null outside a fiber): the access hook's test.
__attribute__((tls_model("initial-exec"))) thread_local Thr* t_cur = nullptr;

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

std::string where(const Worker& w, const Thr* t) {
    std::string s = fmt("kernel %s, block (%u,%u,%u)", w.L->name, w.block.x, w.block.y, w.block.z);
    if (t) s += fmt(", thread (%u,%u,%u)", t->idx.thread_idx.x, t->idx.thread_idx.y, t->idx.thread_idx.z);
    return s;
}

void fail(Worker& w, const std::string& msg) {
    if (!w.failed) {
        w.failed = true;
        w.err = msg;
    }
}

// ---------------------------------------------------------------------------------------
// Shared memory garbage

std::mutex g_reg_mu;
std::vector<unsigned char* (*)()>& dyn_regs() {
    static std::vector<unsigned char* (*)()> v;
    return v;
}

// A static __shared__ variable: its offset in the TLS block, its size, the end of the padding
// after it (its red zone: up to the next 64-byte boundary or the next TLS symbol), its name.
struct StaticShared {
    uint64_t off, size, pad_end;
    std::string name;
};
std::vector<StaticShared> g_static;
uint64_t g_anchor_off = 0;
bool g_static_ok = false;

// The static __shared__ variables are function-local thread_locals, which C++ mangles with
// the prefix _ZZ: the symbol table of this executable lists each with its offset in the TLS
// block and its size, and the anchor's offset gives the block's address in this thread.
void find_static_shared() {
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) return;
    auto rd = [&](void* p, size_t n, off_t o) { return pread(fd, p, n, o) == (ssize_t)n; };
    Elf64_Ehdr eh;
    if (!rd(&eh, sizeof eh, 0) || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) {
        close(fd);
        return;
    }
    std::vector<Elf64_Shdr> sh(eh.e_shnum);
    if (!rd(sh.data(), sizeof(Elf64_Shdr) * sh.size(), eh.e_shoff)) {
        close(fd);
        return;
    }
    bool anchor = false;
    std::vector<uint64_t> starts;  // every TLS symbol's offset
    for (auto& s : sh) {
        if (s.sh_type != SHT_SYMTAB || s.sh_link >= sh.size()) continue;
        const Elf64_Shdr& strs = sh[s.sh_link];
        std::vector<char> names(strs.sh_size + 1, 0);
        std::vector<Elf64_Sym> syms(s.sh_size / sizeof(Elf64_Sym));
        if (!rd(names.data(), strs.sh_size, strs.sh_offset) ||
            !rd(syms.data(), syms.size() * sizeof(Elf64_Sym), s.sh_offset))
            continue;
        for (auto& y : syms) {
            if (ELF64_ST_TYPE(y.st_info) != STT_TLS || y.st_name >= strs.sh_size) continue;
            const char* nm = names.data() + y.st_name;
            starts.push_back(y.st_value);
            if (!strcmp(nm, "td_emu_tls_anchor")) {
                g_anchor_off = y.st_value;
                anchor = true;
            } else if (!strncmp(nm, "_ZZ", 3) && y.st_size > 0 && !strstr(nm, "sanitizer") && !strstr(nm, "tsan") &&
                       !strstr(nm, "asan")) {
                int st = 0;
                char* dm = abi::__cxa_demangle(nm, nullptr, nullptr, &st);
                g_static.push_back({y.st_value, y.st_size, 0, dm && st == 0 ? dm : nm});
                free(dm);
            }
        }
    }
    close(fd);
    std::sort(starts.begin(), starts.end());
    for (auto& v : g_static) {
        const uint64_t end = v.off + v.size;
        uint64_t pad = (end + 63) / 64 * 64;
        auto nx = std::lower_bound(starts.begin(), starts.end(), end);
        if (nx != starts.end()) pad = std::min(pad, *nx);
        v.pad_end = std::max(pad, end);
    }
    g_static_ok = anchor;
    if (getenv("TD_EMU_VERBOSE"))
        fprintf(stderr, "td_emu: %zu static __shared__ variables found in the symbol table%s\n", g_static.size(),
                anchor ? "" : " (no TLS anchor: not poisoned)");
    if (!anchor && getenv("TD_EMU_QUIET") == nullptr)
        fprintf(stderr, "td_emu: no symbol table in /proc/self/exe: static __shared__ variables are not poisoned\n");
}

void fill_garbage(unsigned char* p, size_t n, uint64_t& rng) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = splitmix(rng);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) p[i] = (unsigned char)splitmix(rng);
}

constexpr unsigned char kCanary = 0xC5;

void static_shared_once() {
    static std::once_flag once;
    std::call_once(once, find_static_shared);
}

void block_shared_begin(Worker& w) {
    static_shared_once();
    if (g_static_ok) {
        char* base = (char*)((uintptr_t)&td_emu_tls_anchor - g_anchor_off);
        for (auto& v : g_static) {
            fill_garbage((unsigned char*)base + v.off, v.size, w.rng);
#ifdef EMU_ASAN
            // The red zone after the variable (unpoisoned at the block's end).
            if (v.pad_end > v.off + v.size) __asan_poison_memory_region(base + v.off + v.size, v.pad_end - v.off - v.size);
#endif
        }
    }
    for (auto f : dyn_regs()) {
        unsigned char* p = f();
#ifdef EMU_ASAN
        __asan_unpoison_memory_region(p, kMaxDynSmem);
#endif
        fill_garbage(p, w.L->dyn, w.rng);
#ifdef EMU_ASAN
        __asan_poison_memory_region(p + w.L->dyn, kMaxDynSmem - w.L->dyn);
#else
        memset(p + w.L->dyn, kCanary, kMaxDynSmem - w.L->dyn);
#endif
    }
}

void block_shared_end(Worker& w) {
#ifdef EMU_ASAN
    if (g_static_ok) {
        char* base = (char*)((uintptr_t)&td_emu_tls_anchor - g_anchor_off);
        for (auto& v : g_static)
            if (v.pad_end > v.off + v.size) __asan_unpoison_memory_region(base + v.off + v.size, v.pad_end - v.off - v.size);
    }
#endif
    for (auto f : dyn_regs()) {
        unsigned char* p = f();
#ifdef EMU_ASAN
        __asan_unpoison_memory_region(p, kMaxDynSmem);
#else
        for (size_t i = w.L->dyn; i < kMaxDynSmem; i++)
            if (p[i] != kCanary) {
                fail(w, fmt("%s: write past the end of dynamic shared memory: byte %zu of a launch with %u bytes",
                            where(w, nullptr).c_str(), i, w.L->dyn));
                break;
            }
#endif
    }
}

// ---------------------------------------------------------------------------------------
// Fibers

void switch_to_sched(Worker& w, Thr& t, bool exiting) {
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(w.sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &t.asan_fake, w.sched_stack_bottom, w.sched_stack_size);
#endif
    (void)exiting;
#ifdef EMU_ASM_SWITCH
    td_emu_switch(&t.sp, w.sched_sp);
#else
    swapcontext(&t.ctx, &w.sched);
#endif
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(t.asan_fake, nullptr, nullptr);
#endif
}

void switch_to_fiber(Worker& w, Thr& t) {
    w.cur = &t;
    t_cur = &t;
    w.running.store(&t, std::memory_order_relaxed);
    w.progress.fetch_add(1, std::memory_order_relaxed);
    g_idx = &t.idx;
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(t.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
    void* fake = nullptr;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&fake, t.stack, w.stack_size);
#endif
#ifdef EMU_ASM_SWITCH
    td_emu_switch(&w.sched_sp, t.sp);
#else
    swapcontext(&w.sched, &t.ctx);
#endif
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    (void)fake;
    w.cur = nullptr;
    t_cur = nullptr;
    g_idx = nullptr;
}

void fiber_main(unsigned i, unsigned) {
    Worker& w = *t_worker;
    Thr& t = w.th[i];
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
#ifdef EMU_TSAN
    __tsan_acquire(&w.start_sync);
#endif
    (*w.L->body)();
#ifdef EMU_TSAN
    __tsan_release(&w.end_sync);
#endif
    t.st = St::Done;
    w.done++;
    switch_to_sched(w, t, true);
    abort();  // a finished fiber is never resumed
}

// ---------------------------------------------------------------------------------------
// The memory-access hook. The kernel sources are compiled with GCC's ThreadSanitizer
// instrumentation (-fsanitize=thread) but, outside the TSan build, linked without the TSan
// runtime: every load, store and atomic of kernel code calls one of the __tsan_* functions
// at the end of this file, which land here. An access to this worker's fiber stacks (local
// memory), to the fibers' contexts (the built-in indices) or to the executable's image
// (constants) is ignored; one to this thread's TLS (the
// __shared__ variables) is shared memory; anything else is global memory. With the schedule's
// TD_EMU_COUNT_TRAFFIC a global access is recorded for the coalescing count; with
// TD_EMU_INTERLEAVE the fiber yields at every shared or global access.

uintptr_t g_img_lo = 0, g_img_span = 0;

// Guard regions (td_emu_guard_add): changed only between launches.
struct Guard {
    uintptr_t lo, span;
};
std::mutex g_guard_mu;
std::vector<Guard> g_guards;

void guard_hit(Worker& w, Thr& t, uintptr_t x, size_t n, int kind, void* pc, const Guard& g) {
    const uintptr_t first = std::max(x, g.lo);
    fail(w, fmt("%s: %s of %zu bytes at %p reaches byte %zu of a guard region of %zu bytes around a buffer (an "
                "access before or past the buffer or segment; code address %p)",
                where(w, &t).c_str(), kind == 0 ? "load" : kind == 1 ? "store" : "atomic", n, (void*)x,
                (size_t)(first - g.lo), (size_t)g.span, pc));
}

int image_range_cb(struct dl_phdr_info* info, size_t, void*) {
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        lo = std::min<uintptr_t>(lo, info->dlpi_addr + ph.p_vaddr);
        hi = std::max<uintptr_t>(hi, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
    }
    if (hi > lo) {
        g_img_lo = lo;
        g_img_span = hi - lo;
    }
    return 1;  // the first entry is the executable
}

int tls_range_cb(struct dl_phdr_info* info, size_t, void* data) {
    Worker& w = *(Worker*)data;
    if (!info->dlpi_tls_data || w.ntls >= 8) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_TLS) continue;
        w.tls_lo[w.ntls] = (uintptr_t)info->dlpi_tls_data;
        w.tls_span[w.ntls] = ph.p_memsz;
        w.ntls++;
    }
    return 0;
}

// The ranges of this OS thread that are not global memory (called on the worker's thread).
void hook_ranges(Worker& w) {
    static std::once_flag once;
    std::call_once(once, [] { dl_iterate_phdr(image_range_cb, nullptr); });
    w.stk_lo = (uintptr_t)w.stacks;
    w.stk_span = w.map_size;
    // The fibers' contexts (threadIdx, blockIdx, ... are read from there: registers on a GPU).
    w.thr_lo = (uintptr_t)w.th.data();
    w.thr_span = w.th.size() * sizeof(Thr);
    w.ntls = 0;
    dl_iterate_phdr(tls_range_cb, &w);
    w.zones.clear();
    static_shared_once();
    if (g_static_ok) {
        const uintptr_t base = (uintptr_t)&td_emu_tls_anchor - g_anchor_off;
        for (auto& v : g_static)
            if (v.pad_end > v.off + v.size) w.zones.push_back({base + v.off + v.size, base + v.pad_end, &v});
        std::sort(w.zones.begin(), w.zones.end(), [](const Worker::Zone& a, const Worker::Zone& b) { return a.lo < b.lo; });
    }
}

// A shared access that touches the red zone after a static __shared__ variable.
void check_zones(Worker& w, Thr& t, uintptr_t x, size_t n, int kind, void* pc) {
    auto it = std::upper_bound(w.zones.begin(), w.zones.end(), x,
                               [](uintptr_t a, const Worker::Zone& z) { return a < z.lo; });
    // The zone starting at or before x, and the one after (an access may straddle into it).
    for (int k = 0; k < 2; k++) {
        const Worker::Zone* z = nullptr;
        if (k == 0 && it != w.zones.begin()) z = &*(it - 1);
        if (k == 1 && it != w.zones.end()) z = &*it;
        if (z && x < z->hi && x + n > z->lo) {
            fail(w, fmt("%s: %s of %zu bytes at byte %zu past the end of __shared__ %s (%zu bytes; code address %p)",
                        where(w, &t).c_str(), kind == 0 ? "load" : kind == 1 ? "store" : "atomic", n,
                        (size_t)(std::max(x, z->lo) - z->lo), z->var->name.c_str(), (size_t)z->var->size, pc));
            return;
        }
    }
}

// The occurrence of site pc in lane t since its warp last converged.
uint32_t occurrence(Thr& t, uintptr_t pc) {
    const unsigned h = (unsigned)((pc * 0x9E3779B97F4A7C15ull) >> 60);
    for (unsigned i = 0; i < 16; i++) {
        Thr::Occ& o = t.occ[(h + i) & 15];
        if (o.gen != t.occ_gen) {
            o.pc = pc;
            o.n = 1;
            o.gen = t.occ_gen;
            return 0;
        }
        if (o.pc == pc) return o.n++;
    }
    return 0x80000000u + t.occ_spill++;  // more than 16 sites: by order of execution
}

// Counts the distinct (instruction instance, sector) pairs of a warp's records.
void count_sectors(Worker& w, std::vector<Rec>& v) {
    std::sort(v.begin(), v.end());
    for (size_t i = 0; i < v.size(); i++)
        if (i == 0 || !(v[i] == v[i - 1])) (v[i].store ? w.traffic.store_sectors : w.traffic.load_sectors)++;
    v.clear();
}

// The lanes of `warp` have converged (a warp intrinsic of all of them, a barrier, the block's
// end): their instruction instances are complete.
void flush_warp(Worker& w, unsigned warp) {
    std::vector<Rec>& v = w.recs[warp];
    if (v.empty()) return;
    count_sectors(w, v);
    const unsigned hi = std::min(w.L->nthreads, warp * 32 + 32);
    for (unsigned i = warp * 32; i < hi; i++) {
        w.th[i].occ_gen++;
        w.th[i].occ_spill = 0;
    }
}

void flush_all(Worker& w) {
    for (unsigned wp = 0; wp * 32 < w.L->nthreads; wp++) flush_warp(w, wp);
}

constexpr size_t kRecCap = 1 << 16;

// kind: 0 load, 1 store, 2 atomic (a load and a store).
void record(Worker& w, Thr& t, uintptr_t x, size_t n, int kind, uintptr_t pc) {
    if (n == 0) return;
    const uint32_t occ = occurrence(t, pc);
    std::vector<Rec>& v = w.recs[t.lin / 32];
    for (uint64_t sec = x >> 5, last = (x + n - 1) >> 5; sec <= last; sec++) {
        if (kind != 1) v.push_back(Rec{pc, occ, 0, sec});
        if (kind != 0) v.push_back(Rec{pc, occ, 1, sec});
    }
    if (kind != 1) w.traffic.load_bytes += n;
    if (kind != 0) w.traffic.store_bytes += n;
    if (v.size() > kRecCap) {
        // A warp that runs long without converging: merge its duplicates; if that is not
        // enough, count what there is (an instance split here may count a sector twice).
        std::sort(v.begin(), v.end());
        v.erase(std::unique(v.begin(), v.end()), v.end());
        if (v.size() > kRecCap / 2) count_sectors(w, v);
    }
}

inline void on_access(const void* a, size_t n, int kind, void* pc) {
    Thr* t = t_cur;
    if (!t) return;
    Worker& w = *t_worker;
    if (!(w.count | w.interleave | w.guards)) return;
    const uintptr_t x = (uintptr_t)a;
    if (x - w.stk_lo < w.stk_span || x - w.thr_lo < w.thr_span) return;  // local memory, built-ins
    bool shared = false;
    for (int i = 0; i < w.ntls; i++)
        if (x - w.tls_lo[i] < w.tls_span[i]) {
            shared = true;
            break;
        }
    if (shared) {
        if (!w.zones.empty()) check_zones(w, *t, x, n, kind, pc);
    } else {
        if (x - g_img_lo < g_img_span) return;  // constants
        if (w.guards)
            for (const Guard& g : g_guards)
                if (x + n > g.lo && x < g.lo + g.span) guard_hit(w, *t, x, n, kind, pc, g);
        if (w.count) record(w, *t, x, n, kind, (uintptr_t)pc);
    }
    if (w.interleave) switch_to_sched(w, *t, false);
}

Thr& me() {
    Worker* w = t_worker;
    if (!w || !w->cur) {
        fprintf(stderr, "td_emu: a CUDA intrinsic was called outside a kernel launch\n");
        abort();
    }
    return *w->cur;
}

// ---------------------------------------------------------------------------------------
// Barriers and warp intrinsics: the fiber records what it waits for and yields; the
// scheduler completes the operation when every participant has arrived.

unsigned lane_of(const Thr& t) { return t.lin & 31; }

bool lane_exists(const Worker& w, unsigned warp, unsigned lane) { return warp * 32 + lane < w.L->nthreads; }

// Completes the warp intrinsic that lane t waits at, when all lanes of its mask wait there.
void try_warp(Worker& w, Thr& t) {
    const unsigned warp = t.lin / 32, mask = t.mask;
    Thr* lanes[32] = {};
    for (unsigned l = 0; l < 32; l++) {
        if (!((mask >> l) & 1)) continue;
        if (!lane_exists(w, warp, l)) {
            fail(w, fmt("%s: warp intrinsic at %s:%d with mask %08x names lane %u, which does not exist",
                        where(w, &t).c_str(), t.site.file, t.site.line, mask, l));
            return;
        }
        Thr& o = w.th[warp * 32 + l];
        if (o.st == St::Done) {
            fail(w, fmt("%s: warp intrinsic at %s:%d with mask %08x: lane %u has exited", where(w, &t).c_str(),
                        t.site.file, t.site.line, mask, l));
            return;
        }
        if (o.st != St::Warp) return;  // not there yet (or at a barrier: a deadlock, found later)
        lanes[l] = &o;
    }
    for (unsigned l = 0; l < 32; l++) {
        Thr* o = lanes[l];
        if (!o) continue;
        const bool same_site = o->site.line == t.site.line && !strcmp(o->site.file, t.site.file);
        if (o->wkind != t.wkind || o->mask != t.mask || (t.wkind != kSyncwarp && !same_site) ||
            (t.wkind == kShfl && (o->shkind != t.shkind || o->width != t.width))) {
            fail(w, fmt("%s: divergent warp intrinsic: lane %u at %s:%d (mask %08x), lane %u at %s:%d (mask %08x)",
                        where(w, &t).c_str(), lane_of(t), t.site.file, t.site.line, t.mask, l, o->site.file,
                        o->site.line, o->mask));
            return;
        }
    }
    // Everyone is there: compute each lane's result.
    for (unsigned l = 0; l < 32; l++) {
        Thr* o = lanes[l];
        if (!o) continue;
        switch (o->wkind) {
            case kShfl: {
                const int width = o->width, base = (int)l & ~(width - 1);
                int src = (int)l;
                bool inrange = true;
                if (o->shkind == 0) src = base + (o->arg & (width - 1));
                else if (o->shkind == 1) { src = (int)l - o->arg; inrange = src >= base; }
                else if (o->shkind == 2) { src = (int)l + o->arg; inrange = src < base + width; }
                else { src = (int)l ^ o->arg; inrange = src < base + width && src >= base; }
                if (!inrange) src = (int)l;
                if (src < 0 || src > 31 || !((mask >> src) & 1)) {
                    // The source lane does not take part: its value is undefined.
                    o->res = splitmix(w.rng);
                } else {
                    o->res = lanes[src]->val;
                }
                break;
            }
            case kBallot: {
                unsigned b = 0;
                for (unsigned m = 0; m < 32; m++)
                    if (lanes[m] && lanes[m]->pred) b |= 1u << m;
                o->res = b;
                break;
            }
            case kMatch: {
                unsigned b = 0;
                for (unsigned m = 0; m < 32; m++)
                    if (lanes[m] && lanes[m]->val == o->val) b |= 1u << m;
                o->res = b;
                break;
            }
            default:
                o->res = 0;
        }
    }
    for (unsigned l = 0; l < 32; l++)
        if (lanes[l]) lanes[l]->st = St::Ready;
    // Every lane of the warp that has not exited took part: the warp has converged.
    bool all = true;
    for (unsigned l = 0; l < 32 && all; l++)
        if (!lanes[l] && lane_exists(w, warp, l) && w.th[warp * 32 + l].st != St::Done) all = false;
    if (all) flush_warp(w, warp);
    if (t.wkind == kSyncwarp) w.warp_gen[warp]++;
}

void try_barrier(Worker& w) {
    if (w.bar_arrived + w.done < (int)w.L->nthreads) return;
    Thr* first = nullptr;
    int count = 0, all = 1, any = 0;
    for (auto& t : w.th) {
        if (t.st == St::Done) {
            if (w.bar_arrived > 0) {
                // Find one waiting thread to name the barrier.
                for (auto& o : w.th)
                    if (o.st == St::Barrier) {
                        fail(w, fmt("%s: barrier at %s:%d not reached by all threads: thread (%u,%u,%u) has exited",
                                    where(w, &o).c_str(), o.site.file, o.site.line, t.idx.thread_idx.x,
                                    t.idx.thread_idx.y, t.idx.thread_idx.z));
                        return;
                    }
            }
            continue;
        }
        if (!first) first = &t;
        if (t.site.line != first->site.line || strcmp(t.site.file, first->site.file) != 0 || t.barop != first->barop) {
            fail(w, fmt("%s: threads wait at different barriers: %s:%d and, thread (%u,%u,%u), %s:%d",
                        where(w, first).c_str(), first->site.file, first->site.line, t.idx.thread_idx.x,
                        t.idx.thread_idx.y, t.idx.thread_idx.z, t.site.file, t.site.line));
            return;
        }
        count += t.pred != 0;
        all &= t.pred != 0;
        any |= t.pred != 0;
    }
    if (!first) return;
    const int r = first->barop == 0 ? count : first->barop == 1 ? all : any;
    for (auto& t : w.th) {
        if (t.st == St::Barrier) {
            t.st = St::Ready;
            t.res = (unsigned long long)r;
        }
    }
    w.bar_arrived = 0;
    w.bar_gen++;
    flush_all(w);
}

void wait_here(Thr& t) {
    Worker& w = *t_worker;
    switch_to_sched(w, t, false);
}

int barrier(int pred, int op, Site s) {
    Thr& t = me();
    Worker& w = *t_worker;
    t.bar_parity = (int)(w.bar_gen & 1);
#ifdef EMU_TSAN
    __tsan_release(&w.bar_sync[t.bar_parity]);
#endif
    t.st = St::Barrier;
    t.site = s;
    t.pred = pred;
    t.barop = op;
    w.bar_arrived++;
    wait_here(t);
#ifdef EMU_TSAN
    __tsan_acquire(&w.bar_sync[t.bar_parity]);
#endif
    return (int)t.res;
}

unsigned long long warp_op(int kind, unsigned mask, unsigned long long v, int shkind, int arg, int width, int pred,
                           Site s) {
    Thr& t = me();
    Worker& w = *t_worker;
    if (!((mask >> lane_of(t)) & 1)) {
        fail(w, fmt("%s: warp intrinsic at %s:%d with mask %08x, which does not include the calling lane %u",
                    where(w, &t).c_str(), s.file, s.line, mask, lane_of(t)));
    }
    if (kind == kShfl && (width <= 0 || width > 32 || (width & (width - 1)) != 0)) {
        fail(w, fmt("%s: shuffle at %s:%d with width %d (a power of two up to 32 is required)", where(w, &t).c_str(),
                    s.file, s.line, width));
    }
    t.warp_parity = (int)(w.warp_gen[t.lin / 32] & 1);
#ifdef EMU_TSAN
    if (kind == kSyncwarp) __tsan_release(&w.warp_sync[t.lin / 32][t.warp_parity]);
#endif
    t.st = St::Warp;
    t.wkind = kind;
    t.mask = mask;
    t.val = v;
    t.shkind = shkind;
    t.arg = arg;
    t.width = width;
    t.pred = pred;
    t.site = s;
    wait_here(t);
#ifdef EMU_TSAN
    if (kind == kSyncwarp) __tsan_acquire(&w.warp_sync[t.lin / 32][t.warp_parity]);
#endif
    return t.res;
}

// ---------------------------------------------------------------------------------------
// The scheduler of one block.

void thread_order(Worker& w, std::vector<unsigned>& ord, unsigned lo, unsigned hi) {
    ord.clear();
    for (unsigned i = lo; i < hi; i++) ord.push_back(i);
    if (w.L->s.thread_order == 1) {
        std::reverse(ord.begin(), ord.end());
    } else if (w.L->s.thread_order == 2) {
        for (size_t i = ord.size(); i > 1; i--) std::swap(ord[i - 1], ord[splitmix(w.rng) % i]);
    }
}

void after_yield(Worker& w, Thr& t) {
    if (t.st == St::Warp) try_warp(w, t);
    else if (t.st == St::Barrier || t.st == St::Done) try_barrier(w);
}

// Runs the ready threads of [lo, hi) in the schedule's order until none is ready; returns
// whether any ran.
bool run_range(Worker& w, unsigned lo, unsigned hi, std::vector<unsigned>& ord) {
    bool any = false;
    for (;;) {
        thread_order(w, ord, lo, hi);
        bool ran = false;
        for (unsigned i : ord) {
            Thr& t = w.th[i];
            if (t.st != St::Ready) continue;
            switch_to_fiber(w, t);
            ran = any = true;
            if (w.failed) return true;
            after_yield(w, t);
            if (w.failed) return true;
        }
        if (!ran) return any;
    }
}

void diagnose_deadlock(Worker& w) {
    for (auto& t : w.th) {
        if (t.st == St::Warp) {
            const unsigned warp = t.lin / 32;
            for (unsigned l = 0; l < 32; l++) {
                if (!((t.mask >> l) & 1)) continue;
                const Thr& o = w.th[warp * 32 + l];
                if (o.st == St::Barrier) {
                    fail(w, fmt("%s: deadlock: waits at the warp intrinsic at %s:%d (mask %08x) for lane %u, which "
                                "waits at the barrier at %s:%d",
                                where(w, &t).c_str(), t.site.file, t.site.line, t.mask, l, o.site.file, o.site.line));
                    return;
                }
            }
            fail(w, fmt("%s: deadlock at the warp intrinsic at %s:%d (mask %08x)", where(w, &t).c_str(), t.site.file,
                        t.site.line, t.mask));
            return;
        }
    }
    for (auto& t : w.th)
        if (t.st == St::Barrier) {
            fail(w, fmt("%s: deadlock at the barrier at %s:%d", where(w, &t).c_str(), t.site.file, t.site.line));
            return;
        }
    fail(w, fmt("%s: deadlock", where(w, nullptr).c_str()));
}

void run_block(Worker& w, unsigned lin_block) {
    Launch& L = *w.L;
    w.block = uint3{lin_block % L.grid.x, (lin_block / L.grid.x) % L.grid.y, lin_block / (L.grid.x * L.grid.y)};
    w.bar_arrived = 0;
    w.done = 0;
    w.rng ^= (uint64_t)lin_block * 0x9E3779B97F4A7C15ull;
    block_shared_begin(w);
    for (unsigned i = 0; i < L.nthreads; i++) {
        Thr& t = w.th[i];
        t.lin = i;
        t.st = St::Ready;
        t.idx.thread_idx = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
        t.idx.block_idx = w.block;
        t.idx.block_dim = L.block;
        t.idx.grid_dim = L.grid;
#ifdef EMU_ASM_SWITCH
        // A frame that td_emu_switch pops: six registers (r12 = the thread's index), then
        // the return into td_emu_fiber_entry with a 16-byte aligned stack.
        uintptr_t top = ((uintptr_t)t.stack + w.stack_size) & ~(uintptr_t)15;
        void** f = (void**)(top - 7 * sizeof(void*));
        for (int r = 0; r < 6; r++) f[r] = nullptr;
        f[3] = (void*)(uintptr_t)i;  // r12
        f[6] = (void*)&td_emu_fiber_entry;
        t.sp = f;
#else
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = t.stack;
        t.ctx.uc_stack.ss_size = w.stack_size;
        t.ctx.uc_link = nullptr;
        makecontext(&t.ctx, (void (*)())fiber_main, 2, i, 0u);
#endif
    }
#ifdef EMU_TSAN
    __tsan_release(&w.start_sync);
#endif
    std::vector<unsigned> ord, warps;
    const unsigned nwarps = (L.nthreads + 31) / 32;
    while (!w.failed && w.done < (int)L.nthreads) {
        bool ran;
        if (L.s.warp_runahead) {
            // Each warp runs until all its threads wait at the barrier (or are done).
            thread_order(w, warps, 0, nwarps);
            ran = false;
            for (unsigned wp : warps) {
                ran |= run_range(w, wp * 32, std::min(L.nthreads, wp * 32 + 32), ord);
                if (w.failed) break;
            }
        } else {
            ran = run_range(w, 0, L.nthreads, ord);
        }
        if (w.failed) break;
        if (!ran && w.done < (int)L.nthreads) {
            diagnose_deadlock(w);
            break;
        }
    }
#ifdef EMU_TSAN
    __tsan_acquire(&w.end_sync);
#endif
    w.running.store(nullptr, std::memory_order_relaxed);
    flush_all(w);
    block_shared_end(w);
}

size_t stack_size() {
    if (const char* e = getenv("TD_EMU_STACK_KB")) return (size_t)atoi(e) * 1024;
#if defined(EMU_ASAN) || defined(EMU_TSAN)
    return 256 * 1024;
#else
    return 128 * 1024;
#endif
}

#ifdef EMU_TSAN
// TSan fiber states are costly to create: kept across launches (a fiber of a failed block,
// left in the middle of its frames, is destroyed instead).
// One pool per worker index, each with its own lock: a shared lock would order a worker that
// takes it after another returned its fibers after that worker's blocks, and a race between
// their blocks would go unseen.
constexpr unsigned kPools = 16;
std::mutex g_tsan_mu[kPools];
std::vector<void*> g_tsan_pools[kPools];
#endif

void worker_main(Worker* wp, unsigned index, unsigned nworkers) {
    Worker& w = *wp;
    t_worker = &w;
    Launch& L = *w.L;
    hook_ranges(w);
#ifdef EMU_TSAN
    w.sched_tsan = __tsan_get_current_fiber();
    if (index < kPools) {
        std::lock_guard<std::mutex> g(g_tsan_mu[index]);
        for (auto& t : w.th) {
            if (g_tsan_pools[index].empty()) {
                t.tsan_fiber = __tsan_create_fiber(0);
            } else {
                t.tsan_fiber = g_tsan_pools[index].back();
                g_tsan_pools[index].pop_back();
            }
        }
    } else {
        for (auto& t : w.th) t.tsan_fiber = __tsan_create_fiber(0);
    }
#endif
    for (size_t n = 0;; n++) {
        if (L.stop.load()) break;
#ifdef EMU_TSAN
        // Under TSan the blocks alternate between the workers (block i on worker i mod n), so
        // that neighbouring blocks always run on different OS threads: blocks on one worker
        // are ordered, and a race between them would go unseen.
        const size_t i = n * nworkers + index;
        (void)L.next;
#else
        (void)index;
        (void)nworkers;
        const size_t i = L.next.fetch_add(1);
#endif
        if (i >= L.order.size()) break;
        run_block(w, L.order[i]);
        if (w.failed) {
            std::lock_guard<std::mutex> g(L.mu);
            if (L.err.empty()) L.err = w.err;
            L.stop.store(true);
            break;
        }
    }
#ifdef EMU_TSAN
    if (index < kPools) {
        std::lock_guard<std::mutex> g(g_tsan_mu[index]);
        for (auto& t : w.th) {
            if (w.failed) __tsan_destroy_fiber(t.tsan_fiber);
            else g_tsan_pools[index].push_back(t.tsan_fiber);
        }
    } else {
        for (auto& t : w.th) __tsan_destroy_fiber(t.tsan_fiber);
    }
#endif
    {
        std::lock_guard<std::mutex> g(L.mu);
        L.traffic.load_bytes += w.traffic.load_bytes;
        L.traffic.store_bytes += w.traffic.store_bytes;
        L.traffic.load_sectors += w.traffic.load_sectors;
        L.traffic.store_sectors += w.traffic.store_sectors;
    }
    t_worker = nullptr;
}

}  // namespace

extern "C" void td_emu_fiber_start(uintptr_t i) { fiber_main((unsigned)i, 0); }

DynSharedReg::DynSharedReg(unsigned char* (*addr)()) {
    std::lock_guard<std::mutex> g(g_reg_mu);
    dyn_regs().push_back(addr);
}

void syncthreads(Site s) { barrier(1, 0, s); }
int syncthreads_op(int pred, int op, Site s) { return barrier(pred != 0, op, s); }
void syncwarp(unsigned mask, Site s) { warp_op(kSyncwarp, mask, 0, 0, 0, 32, 0, s); }
unsigned long long shfl(unsigned mask, unsigned long long v, int kind, int arg, int width, Site s) {
    return warp_op(kShfl, mask, v, kind, arg, width, 0, s);
}
unsigned ballot(unsigned mask, int pred, Site s) { return (unsigned)warp_op(kBallot, mask, 0, 0, 0, 32, pred != 0, s); }
unsigned match_any(unsigned mask, unsigned long long v, Site s) {
    return (unsigned)warp_op(kMatch, mask, v, 0, 0, 32, 0, s);
}
unsigned active_mask() {
    Thr& t = me();
    Worker& w = *t_worker;
    // The lanes of this warp that have not exited (the emulator does not track divergence).
    unsigned m = 0;
    const unsigned warp = t.lin / 32;
    for (unsigned l = 0; l < 32; l++)
        if (lane_exists(w, warp, l) && w.th[warp * 32 + l].st != St::Done) m |= 1u << l;
    return m;
}
void trap(const char* what) {
    Thr& t = me();
    fprintf(stderr, "td_emu: %s: %s\n", where(*t_worker, &t).c_str(), what);
    abort();
}

// The traffic of the last launch made on this OS thread (td_emu_last_traffic). The counters
// themselves are filled by the traffic accounting (zeros until a launch counts them).
thread_local TdEmuTraffic t_last_traffic{};

bool launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
            unsigned dyn_smem, const std::function<void()>& body, const TdEmuSchedule& s, std::string* err) {
    const uint64_t nthreads = (uint64_t)bx * by * bz, nblocks = (uint64_t)gx * gy * gz;
    if (nthreads == 0 || nthreads > 1024 || bz > 64) {
        *err = fmt("kernel %s: block (%u,%u,%u): a block has 1 to 1024 threads", name, bx, by, bz);
        return false;
    }
    if (nblocks == 0 || gy > 65535 || gz > 65535) {
        *err = fmt("kernel %s: grid (%u,%u,%u): at least one block, y and z at most 65535", name, gx, gy, gz);
        return false;
    }
    if (dyn_smem > kMaxDynSmem) {
        *err = fmt("kernel %s: %u bytes of dynamic shared memory; the emulator (and an H200) allow %u", name,
                   dyn_smem, kMaxDynSmem);
        return false;
    }
    t_last_traffic = TdEmuTraffic{};
    Launch L;
    L.name = name;
    L.grid = dim3(gx, gy, gz);
    L.block = dim3(bx, by, bz);
    L.nthreads = (unsigned)nthreads;
    L.dyn = dyn_smem;
    L.body = &body;
    L.s = s;
    uint64_t rng = s.seed ^ 0x5DEECE66Dull;
    L.order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; i++) L.order[i] = (unsigned)i;
    if (s.thread_order == 1) std::reverse(L.order.begin(), L.order.end());
    else if (s.thread_order == 2)
        for (size_t i = L.order.size(); i > 1; i--) std::swap(L.order[i - 1], L.order[splitmix(rng) % i]);
#ifdef EMU_TSAN
    const uint32_t min_workers = 2;
#else
    const uint32_t min_workers = 1;
#endif
    const unsigned nw = (unsigned)std::min<uint64_t>(std::max<uint32_t>(min_workers, s.block_workers), nblocks);
    const size_t ss = stack_size();
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    std::vector<Worker> ws(nw);
    for (unsigned i = 0; i < nw; i++) {
        Worker& w = ws[i];
        w.L = &L;
        w.rng = s.seed + 0x1234567ull * (i + 1);
        w.stack_size = ss;
        w.th.resize(L.nthreads);
        // One mapping per worker; a guard page below each stack turns an overflow into a fault.
        w.map_size = (ss + page) * L.nthreads;
        void* m = mmap(nullptr, w.map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            *err = fmt("kernel %s: cannot map %zu bytes of fiber stacks", name, w.map_size);
            for (unsigned j = 0; j < i; j++) munmap(ws[j].stacks, ws[j].map_size);
            return false;
        }
        w.stacks = (char*)m;
        w.count = (s.flags & TD_EMU_COUNT_TRAFFIC) != 0;
        w.interleave = (s.flags & TD_EMU_INTERLEAVE) != 0;
        w.guards = !g_guards.empty();
        for (unsigned t = 0; t < L.nthreads; t++) {
            char* g = w.stacks + (ss + page) * t;
            mprotect(g, page, PROT_NONE);
            w.th[t].stack = g + page;
        }
    }
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < nw; i++) threads.emplace_back(worker_main, &ws[i], i, nw);
    // Watchdog: a block that makes no progress (no fiber switch) for the timeout.
    const uint64_t timeout_ms = s.barrier_timeout_ms ? s.barrier_timeout_ms : 60000;
    std::vector<unsigned long long> last(nw, ~0ull);
    std::vector<std::chrono::steady_clock::time_point> since(nw, std::chrono::steady_clock::now());
    bool finished = false;
    std::mutex dog_mu;
    std::condition_variable dog_cv;
    std::thread dog([&] {
        std::unique_lock<std::mutex> lk(dog_mu);
        while (!finished) {
            dog_cv.wait_for(lk, std::chrono::milliseconds(50));
            if (finished) break;
            const auto now = std::chrono::steady_clock::now();
            for (unsigned i = 0; i < nw; i++) {
                const unsigned long long p = ws[i].progress.load(std::memory_order_relaxed);
                const Thr* r = ws[i].running.load(std::memory_order_relaxed);
                if (p != last[i] || r == nullptr) {
                    last[i] = p;
                    since[i] = now;
                } else if (now - since[i] > std::chrono::milliseconds(timeout_ms)) {
                    fprintf(stderr,
                            "td_emu: kernel %s: thread (%u,%u,%u) of block (%u,%u,%u) ran %llu ms without reaching "
                            "a barrier or warp intrinsic (an endless loop, or a wait for another thread without a "
                            "barrier); exiting\n",
                            name, r->idx.thread_idx.x, r->idx.thread_idx.y, r->idx.thread_idx.z, r->idx.block_idx.x,
                            r->idx.block_idx.y, r->idx.block_idx.z, (unsigned long long)timeout_ms);
                    fflush(stderr);
                    _exit(124);
                }
            }
        }
    });
    for (auto& t : threads) t.join();
    {
        std::lock_guard<std::mutex> g(dog_mu);
        finished = true;
    }
    dog_cv.notify_all();
    dog.join();
    t_last_traffic = L.traffic;
    for (auto& w : ws) {
#ifdef EMU_ASAN
        // Fibers left in the middle of a frame (a failed block) leave poisoned stack shadow.
        if (w.failed) __asan_unpoison_memory_region(w.stacks, w.map_size);
#endif
        munmap(w.stacks, w.map_size);
    }
    if (!L.err.empty()) {
        *err = L.err;
        return false;
    }
    return true;
}

TdEmuSchedule schedule_from_env(uint64_t call) {
    TdEmuSchedule s{};
    const char* o = getenv("TD_EMU_ORDER");
    const char* r = getenv("TD_EMU_RUNAHEAD");
    const char* wk = getenv("TD_EMU_WORKERS");
    const char* sd = getenv("TD_EMU_SEED");
    const char* to = getenv("TD_EMU_TIMEOUT_MS");
    const uint64_t seed = sd ? strtoull(sd, nullptr, 0) : 0x7d5eedull;
    if (!o || !strcmp(o, "rotate")) {
        s.thread_order = (uint32_t)(call % 3);
        s.warp_runahead = (uint32_t)((call / 3) % 2);
    } else {
        s.thread_order = !strcmp(o, "reverse") ? 1 : !strcmp(o, "random") ? 2 : 0;
        s.warp_runahead = r ? (uint32_t)atoi(r) : 0;
    }
    if (r && o && strcmp(o, "rotate")) s.warp_runahead = (uint32_t)atoi(r);
    s.block_workers = wk ? (uint32_t)atoi(wk) : 3;
    s.seed = seed + call * 0x9E3779B97F4A7C15ull;
    s.barrier_timeout_ms = to ? strtoull(to, nullptr, 0) : 0;
    // TD_EMU_TRAFFIC=1 counts traffic; TD_EMU_INTERLEAVE=1 switches at every access,
    // =rotate (the default with TD_EMU_ORDER=rotate) on every fourth call.
    const char* tr = getenv("TD_EMU_TRAFFIC");
    const char* il = getenv("TD_EMU_INTERLEAVE");
    if (tr && atoi(tr)) s.flags |= TD_EMU_COUNT_TRAFFIC;
    if (il ? (!strcmp(il, "rotate") ? call % 4 == 3 : atoi(il) != 0) : ((!o || !strcmp(o, "rotate")) && call % 4 == 3))
        s.flags |= TD_EMU_INTERLEAVE;
    return s;
}

}  // namespace emu

extern "C" void td_emu_guard_add(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(emu::g_guard_mu);
    emu::g_guards.push_back(emu::Guard{(uintptr_t)p, n});
}
extern "C" void td_emu_guard_remove(const void* p) {
    std::lock_guard<std::mutex> g(emu::g_guard_mu);
    auto& v = emu::g_guards;
    for (size_t i = 0; i < v.size(); i++)
        if (v[i].lo == (uintptr_t)p) {
            v[i] = v.back();
            v.pop_back();
            break;
        }
}

// Whether this runtime answers the access hook (everything but the TSan build, where the
// instrumented kernel code calls TSan itself).
extern "C" int td_emu_access_hook(void) {
#ifdef EMU_TSAN
    return 0;
#else
    return 1;
#endif
}

extern "C" void td_emu_last_traffic(TdEmuTraffic* out) {
    if (out) *out = emu::t_last_traffic;
}

#ifndef EMU_TSAN
// The entry points of GCC's ThreadSanitizer instrumentation, for kernel code compiled with
// -fsanitize=thread and linked without the TSan runtime (everything but the TSan build): each
// access goes to emu::on_access; atomics are performed here, as real atomics.
namespace {
inline void acc(const volatile void* a, size_t n, int kind, void* pc) { emu::on_access((const void*)a, n, kind, pc); }
}  // namespace
extern "C" {
#define EMU_RW(N)                                                                                   \
    void __tsan_read##N(void* a) { acc(a, N, 0, __builtin_return_address(0)); }                      \
    void __tsan_write##N(void* a) { acc(a, N, 1, __builtin_return_address(0)); }                     \
    void __tsan_unaligned_read##N(void* a) { acc(a, N, 0, __builtin_return_address(0)); }            \
    void __tsan_unaligned_write##N(void* a) { acc(a, N, 1, __builtin_return_address(0)); }           \
    void __tsan_volatile_read##N(void* a) { acc(a, N, 0, __builtin_return_address(0)); }             \
    void __tsan_volatile_write##N(void* a) { acc(a, N, 1, __builtin_return_address(0)); }
EMU_RW(1)
EMU_RW(2)
EMU_RW(4)
EMU_RW(8)
EMU_RW(16)
#undef EMU_RW
void __tsan_read_range(void* a, unsigned long n) { acc(a, n, 0, __builtin_return_address(0)); }
void __tsan_write_range(void* a, unsigned long n) { acc(a, n, 1, __builtin_return_address(0)); }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_init() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#define EMU_ATOMIC(N, T)                                                                                  \
    T __tsan_atomic##N##_load(const volatile T* a, int) {                                                 \
        acc(a, sizeof(T), 0, __builtin_return_address(0));                                                \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                      \
    }                                                                                                     \
    void __tsan_atomic##N##_store(volatile T* a, T v, int) {                                              \
        acc(a, sizeof(T), 1, __builtin_return_address(0));                                                \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                     \
    T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                              \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                               \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                             \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                             \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                             \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                              \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                             \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                \
    }                                                                                                     \
    T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                            \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                               \
    }                                                                                                     \
    int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                  \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);           \
    }                                                                                                     \
    int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                    \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
    }                                                                                                     \
    T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                        \
        acc(a, sizeof(T), 2, __builtin_return_address(0));                                                \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
        return c;                                                                                         \
    }
EMU_ATOMIC(8, uint8_t)
EMU_ATOMIC(16, uint16_t)
EMU_ATOMIC(32, uint32_t)
EMU_ATOMIC(64, uint64_t)
#undef EMU_ATOMIC
}
#endif
