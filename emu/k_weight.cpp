// kernels/weight.cu under the emulator, and its kernels in the table.
#include "../kernels/weight.cu"
#include "kernel_table.h"

#define EMU_WEIGHT_WIDTH(W)                  \
    EMU_KERNEL(td_block_##W##_t64);    \
    EMU_KERNEL(td_block_##W##_t128);   \
    EMU_KERNEL(td_block_##W##_t256);   \
    EMU_KERNEL(td_block_##W##_t512);   \
    EMU_KERNEL(td_block_##W##_t1024);  \
    EMU_KERNEL(td_bwd_##W);             \
    EMU_KERNEL(td_long_count_##W);     \
    EMU_KERNEL(td_long_resolve_##W);   \
    EMU_KERNEL(td_long_apply_##W);      \
    EMU_KERNEL(td_pack_##W);            \
    EMU_KERNEL(td_unpack_##W);

EMU_KERNELS(weight) {
    EMU_WEIGHT_WIDTH(u16)
    EMU_WEIGHT_WIDTH(u32)
    EMU_WEIGHT_WIDTH(u64)
    EMU_KERNEL(td_tiny_u16_t256);
    EMU_KERNEL(td_tiny_u32_t256);
    EMU_KERNEL(td_tiny_u64_t128);
    EMU_KERNEL(td_mask_u8);
    EMU_KERNEL(td_pack_count);
}
