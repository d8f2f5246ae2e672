// emu/test/traffic.cu under the emulator: the emulator's own test kernels, in the table.
#include "test/traffic.cu"
#include "kernel_table.h"

EMU_KERNELS(test) {
    EMU_KERNEL(emu_test_copy_u32);
    EMU_KERNEL(emu_test_strided_u32);
    EMU_KERNEL(emu_test_copy_u32x4);
    EMU_KERNEL(emu_test_shared_hist);
}
