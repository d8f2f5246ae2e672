// kernels/unit.cu under the emulator, and its kernels in the table.
#include "../kernels/unit.cu"
#include "kernel_table.h"

EMU_KERNELS(unit) {
    EMU_KERNEL(td_unit_scores_block_f32);
    EMU_KERNEL(td_unit_scores_block_f16);
    EMU_KERNEL(td_unit_scores_block_bf16);
    EMU_KERNEL(td_unit_scores_block_f64);
    EMU_KERNEL(td_unit_scores_tiny_f32);
    EMU_KERNEL(td_unit_scores_tiny_f16);
    EMU_KERNEL(td_unit_scores_tiny_bf16);
    EMU_KERNEL(td_unit_scores_tiny_f64);
    EMU_KERNEL(td_unit_apply_u16);
    EMU_KERNEL(td_unit_apply_u32);
    EMU_KERNEL(td_unit_apply_u64);
}
