// The table of kernels that td_emu_launch knows: each emu/k_*.cpp includes a kernel source
// and lists its extern "C" kernels, one EMU_KERNEL line each (emu/README.md).
#pragma once
#include <stddef.h>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu {
struct KernelEntry {
    const char* name;
    unsigned nargs;
    // Runs the kernel body in the calling CUDA thread with the arguments of args (like
    // cuLaunchKernel: args[i] points at the value of argument i).
    void (*call)(const void* fn, void** args);
    const void* fn;
};

// Not instrumented by the access hook: reading the arguments is not the kernel's traffic (a
// GPU passes them in the constant bank). The kernel itself is not inlined here (GCC does not
// inline across different sanitizer attributes), so its accesses stay instrumented.
template <class... A, size_t... I>
__attribute__((no_sanitize_thread)) void call_with(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
}
template <class... A> __attribute__((no_sanitize_thread)) void call_erased(const void* fn, void** a) {
    call_with(reinterpret_cast<void (*)(A...)>(const_cast<void*>(fn)), a, std::index_sequence_for<A...>{});
}

struct KernelTable {
    std::vector<KernelEntry> v;
    template <class... A> void add(const char* name, void (*f)(A...)) {
        v.push_back({name, (unsigned)sizeof...(A), &call_erased<A...>, reinterpret_cast<const void*>(f)});
    }
};
}  // namespace emu

#define EMU_KERNELS(group) void emu_kernels_##group(::emu::KernelTable& t)
#define EMU_KERNEL(fn) t.add(#fn, &fn)
