// kernels/weight.cu under the emulator, and its kernels in the table.
#include "../kernels/weight.cu"
#include "kernel_table.h"

EMU_KERNELS(weight) {
    EMU_KERNEL(tdw_block_u16);
    EMU_KERNEL(tdw_block_u32);
    EMU_KERNEL(tdw_block_u64);
    EMU_KERNEL(tdw_tiny_u16);
    EMU_KERNEL(tdw_tiny_u32);
    EMU_KERNEL(tdw_tiny_u64);
    EMU_KERNEL(tdw_long_hist_u16);
    EMU_KERNEL(tdw_long_hist_u32);
    EMU_KERNEL(tdw_long_hist_u64);
    EMU_KERNEL(tdw_long_apply_u16);
    EMU_KERNEL(tdw_long_apply_u32);
    EMU_KERNEL(tdw_long_apply_u64);
}
