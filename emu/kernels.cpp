// td_emu_launch: the C ABI over the kernel table (emu/td_emu.h).
#include <stdio.h>
#include <string.h>
#include <mutex>
#include "kernel_table.h"
#include "td_emu.h"

// One line per kernel source (emu/k_*.cpp).
EMU_KERNELS(weight);
EMU_KERNELS(unit);
EMU_KERNELS(nm);
EMU_KERNELS(test);  // emu/test/traffic.cu: the emulator's own test kernels

static const emu::KernelTable& table() {
    static emu::KernelTable t;
    static std::once_flag once;
    std::call_once(once, [] {
        emu_kernels_weight(t);
        emu_kernels_unit(t);
        emu_kernels_nm(t);
        emu_kernels_test(t);
    });
    return t;
}

static void put(char* err, size_t len, const std::string& s) {
    if (err && len) snprintf(err, len, "%s", s.c_str());
}

extern "C" uint32_t td_emu_kernel_count(void) { return (uint32_t)table().v.size(); }
extern "C" const char* td_emu_kernel_name(uint32_t i) { return i < table().v.size() ? table().v[i].name : nullptr; }

extern "C" int td_emu_launch(const char* name, uint32_t grid_x, uint32_t grid_y, uint32_t grid_z, uint32_t block_x,
                             uint32_t block_y, uint32_t block_z, uint32_t dyn_smem, void** args, uint32_t nargs,
                             const TdEmuSchedule* schedule, char* err, size_t err_len) {
    if (!name) {
        put(err, err_len, "td_emu_launch: no kernel name");
        return 1;
    }
    const emu::KernelEntry* e = nullptr;
    for (auto& k : table().v)
        if (!strcmp(k.name, name)) e = &k;
    if (!e) {
        put(err, err_len, std::string("td_emu_launch: unknown kernel ") + name + " (emu/k_*.cpp lists the kernels)");
        return 1;
    }
    if (nargs != e->nargs) {
        put(err, err_len, "td_emu_launch: kernel " + std::string(name) + " takes " + std::to_string(e->nargs) +
                              " arguments, got " + std::to_string(nargs));
        return 1;
    }
    for (uint32_t i = 0; i < nargs; i++)
        if (!args || !args[i]) {
            put(err, err_len, "td_emu_launch: kernel " + std::string(name) + ": argument " + std::to_string(i) +
                                  " is a null pointer (args[i] must point at the argument's value)");
            return 1;
        }
    TdEmuSchedule s = schedule ? *schedule : emu::schedule_from_env(0);
    std::string msg;
    const std::function<void()> body = [e, args] { e->call(e->fn, args); };
    if (!emu::launch(name, grid_x, grid_y, grid_z, block_x, block_y, block_z, dyn_smem, body, s, &msg)) {
        put(err, err_len, msg);
        return 2;
    }
    return 0;
}
