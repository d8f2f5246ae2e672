/* The CUDA emulator's C ABI (see EMU-INTERFACE.md in the brief and emu/README.md): launches a
 * kernel of the crate, by its extern "C" name, on the CPU. */
#ifndef TD_EMU_H
#define TD_EMU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct TdEmuSchedule {
    uint32_t thread_order;       /* 0 forward, 1 reverse, 2 random (seeded) */
    uint32_t block_workers;      /* OS threads that run blocks concurrently (>= 1) */
    uint32_t warp_runahead;      /* 1: warps may run ahead of each other up to the next barrier */
    uint32_t flags;              /* TD_EMU_COUNT_TRAFFIC | TD_EMU_INTERLEAVE (0: neither) */
    uint64_t seed;               /* for the random order and the shared-memory garbage */
    uint64_t barrier_timeout_ms; /* a block that makes no progress this long fails (0: 60 s) */
} TdEmuSchedule;

/* TdEmuSchedule.flags. COUNT_TRAFFIC: count the launch's global-memory traffic (see
 * td_emu_last_traffic; the plain driver took +20% with it on every launch). INTERLEAVE: switch
 * fibers at every shared- and global-memory access and atomic of the kernel code, not only at
 * barriers and warp intrinsics, so that a non-atomic read-modify-write of two threads is torn
 * as a GPU may tear it (the plain driver took +35% with it on every launch). Both need the
 * kernel sources compiled with the access hook (-fsanitize=thread instrumentation without the
 * TSan runtime, emu/README.md); the ASan and TSan builds have no hook and ignore them. */
#define TD_EMU_COUNT_TRAFFIC 1u
#define TD_EMU_INTERLEAVE 2u

/* Launches kernel `name` like cuLaunchKernel: args[i] points at the value of kernel argument i
 * (device pointers are host pointers here). dyn_smem: dynamic shared memory in bytes.
 * Blocking. Returns 0 on success; otherwise nonzero with a message in err (kernel, block,
 * thread and what: out-of-bounds shared access, barrier deadlock, divergence at a warp
 * intrinsic, unknown kernel, wrong argument count). A kernel that runs past the timeout
 * without reaching a barrier cannot be interrupted: the emulator prints the report and ends
 * the process with exit code 124. */
int td_emu_launch(const char* name, uint32_t grid_x, uint32_t grid_y, uint32_t grid_z,
                  uint32_t block_x, uint32_t block_y, uint32_t block_z, uint32_t dyn_smem,
                  void** args, uint32_t nargs, const TdEmuSchedule* schedule, char* err,
                  size_t err_len);

/* The global-memory traffic of one launch, as the hardware's coalescer would see it: per warp
 * and per instruction instance, the bytes the lanes asked for and the distinct 32-byte sectors
 * they touched, loads and stores apart (an atomic counts as both). */
typedef struct TdEmuTraffic {
    uint64_t load_bytes;
    uint64_t store_bytes;
    uint64_t load_sectors;
    uint64_t store_sectors;
} TdEmuTraffic;

/* The traffic of the last launch that the calling OS thread made (through td_emu_launch or
 * emu::launch); all zeros before its first launch, and for a launch whose schedule did not
 * ask for TD_EMU_COUNT_TRAFFIC or whose kernels were compiled without the access hook. */
void td_emu_last_traffic(TdEmuTraffic* out);

/* Guard regions: a kernel's access to [p, p + n) is an emulator report (the launch fails,
 * naming kernel, block, thread and the address). The drivers put them around the buffers a
 * launch treats as separate (emu/test/harness.h). Checked by the access hook (builds whose
 * kernel code has it: not ASan, which has its own poisoning, nor TSan). remove takes the p
 * of an add. Not for use while a launch runs. */
void td_emu_guard_add(const void* p, size_t n);
void td_emu_guard_remove(const void* p);

/* The number of kernels in the table and the name of kernel i (null past the end). */
uint32_t td_emu_kernel_count(void);
const char* td_emu_kernel_name(uint32_t i);

#ifdef __cplusplus
}

#include <functional>
#include <string>

struct dim3;
namespace emu {
/* The largest dynamic shared memory a launch may ask for (an H200's opt-in limit). */
constexpr unsigned kMaxDynSmem = 232448;

/* Runs `body` as every thread of every block of the grid (the C ABI and the dev harness's
 * launches go through it). Returns false with the report in *err on a failure. */
bool launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
            unsigned bz, unsigned dyn_smem, const std::function<void()>& body,
            const TdEmuSchedule& s, std::string* err);

/* A schedule from the environment (TD_EMU_ORDER=forward|reverse|random|rotate,
 * TD_EMU_WORKERS, TD_EMU_RUNAHEAD=0|1, TD_EMU_SEED, TD_EMU_TIMEOUT_MS); `rotate` (the default)
 * changes order and run-ahead from one call to the next. */
TdEmuSchedule schedule_from_env(uint64_t call);

/* Registers the per-thread address of a dynamic shared-memory array (emu/dyn_shared.cpp). */
struct DynSharedReg {
    DynSharedReg(unsigned char* (*addr)());
};
}  // namespace emu

/* `extern __shared__ T name[]` of a kernel: defines the array behind it (one line per name). */
#define EMU_DYNAMIC_SHARED(name)                                                              \
    thread_local __attribute__((aligned(64))) unsigned char name[::emu::kMaxDynSmem];        \
    static unsigned char* emu_dyn_addr_##name() { return name; }                              \
    static ::emu::DynSharedReg emu_dyn_reg_##name(emu_dyn_addr_##name);
#endif

#endif /* TD_EMU_H */
