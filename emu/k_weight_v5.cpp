// kernels/weight_v5.cu under the emulator, and its kernels in the table.
#include "../kernels/weight_v5.cu"
#include "kernel_table.h"

#define EMU_V5_WIDTH(W)                  \
    EMU_KERNEL(tdw5_block_##W##_t64);    \
    EMU_KERNEL(tdw5_block_##W##_t128);   \
    EMU_KERNEL(tdw5_block_##W##_t256);   \
    EMU_KERNEL(tdw5_block_##W##_t512);   \
    EMU_KERNEL(tdw5_block_##W##_t1024);  \
    EMU_KERNEL(td5_bwd_##W);             \
    EMU_KERNEL(tdw5_long_count_##W);     \
    EMU_KERNEL(tdw5_long_resolve_##W);   \
    EMU_KERNEL(tdw5_long_apply_##W);

EMU_KERNELS(weight_v5) {
    EMU_V5_WIDTH(u16)
    EMU_V5_WIDTH(u32)
    EMU_V5_WIDTH(u64)
    EMU_KERNEL(tdw5_tiny_u16_t256);
    EMU_KERNEL(tdw5_tiny_u32_t256);
    EMU_KERNEL(tdw5_tiny_u64_t128);
}
