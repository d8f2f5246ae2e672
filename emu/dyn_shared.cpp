// The arrays behind the kernels' `extern __shared__` declarations: one line per name used by
// any kernel the emulator runs (a kernel with a new name fails to link until it is added).
#include "td_emu.h"

EMU_DYNAMIC_SHARED(smem_raw)
