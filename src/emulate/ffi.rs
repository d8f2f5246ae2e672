//! The C ABI of the emulator (`emu/td_emu.h`), compiled and linked by `build.rs` with the
//! `emulate` feature.

use std::ffi::{c_char, c_int, c_void};

/// `TdEmuSchedule` of `emu/td_emu.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct TdEmuSchedule {
    /// 0 forward, 1 reverse, 2 random (seeded).
    pub thread_order: u32,
    pub block_workers: u32,
    pub warp_runahead: u32,
    /// [`TD_EMU_COUNT_TRAFFIC`] | [`TD_EMU_INTERLEAVE`].
    pub flags: u32,
    pub seed: u64,
    /// 0: the emulator's default.
    pub barrier_timeout_ms: u64,
}

/// `TdEmuSchedule.flags`: count the launch's global-memory traffic.
pub(super) const TD_EMU_COUNT_TRAFFIC: u32 = 1;
/// `TdEmuSchedule.flags`: switch fibers at every shared- and global-memory access.
pub(super) const TD_EMU_INTERLEAVE: u32 = 2;

/// `TdEmuTraffic` of `emu/td_emu.h`: one launch's global-memory traffic.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TdEmuTraffic {
    pub load_bytes: u64,
    pub store_bytes: u64,
    pub load_sectors: u64,
    pub store_sectors: u64,
}

extern "C" {
    /// The traffic of the last launch the calling OS thread made.
    pub(super) fn td_emu_last_traffic(out: *mut TdEmuTraffic);

    /// Launches kernel `name` on the emulator like `cuLaunchKernel` (blocking); 0 on success,
    /// otherwise nonzero with a message in `err`.
    pub(super) fn td_emu_launch(
        name: *const c_char,
        grid_x: u32,
        grid_y: u32,
        grid_z: u32,
        block_x: u32,
        block_y: u32,
        block_z: u32,
        dyn_smem: u32,
        args: *mut *mut c_void,
        nargs: u32,
        schedule: *const TdEmuSchedule,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}
