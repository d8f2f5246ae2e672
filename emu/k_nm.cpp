// kernels/nm.cu under the emulator, and its kernels in the table.
#include "../kernels/nm.cu"
#include "kernel_table.h"

EMU_KERNELS(nm) {
    EMU_KERNEL(td_nm_u16_m4);
    EMU_KERNEL(td_nm_u16_m8);
    EMU_KERNEL(td_nm_u16_m16);
    EMU_KERNEL(td_nm_u16_m32);
    EMU_KERNEL(td_nm_u32_m4);
    EMU_KERNEL(td_nm_u32_m8);
    EMU_KERNEL(td_nm_u32_m16);
    EMU_KERNEL(td_nm_u32_m32);
    EMU_KERNEL(td_nm_u64_m4);
    EMU_KERNEL(td_nm_u64_m8);
    EMU_KERNEL(td_nm_u64_m16);
    EMU_KERNEL(td_nm_u64_m32);
}
