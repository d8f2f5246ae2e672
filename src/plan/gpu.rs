//! A GPU profile: the numbers of a device that the launch plan depends on, and the limits
//! ([`Limits`]) that the CUDA driver would report for this crate's kernels on it, computed
//! with the rules of CUDA's occupancy calculator (`cuda_occupancy.h`). The emulator runs
//! with these limits, so that it executes the plan that a GPU of that profile gets.

use super::{tiny_smem, Limits, Width, WidthLimits};
use crate::cuda_params::{TD_BLOCK, TD_BLOCK_ROW_BYTES, TD_TINY_ROW};
use candle_core::{bail, Result};

/// A GPU as this crate's launch plan sees it: its multiprocessors, caches and per-block
/// limits, and the resources of the crate's kernels compiled for its architecture (what
/// `cuobjdump --dump-resource-usage` reports for the fatbin's SASS of that target;
/// `scripts/launchability.sh` checks them against the fatbin).
///
/// [`Gpu::h200`] and [`Gpu::sm86`] are the two profiles the crate tests with; any field can
/// be changed to explore a device that does not exist (a smaller L2 makes the long-row path
/// take several row groups, a smaller shared memory sends rows to the fallback kernels):
///
/// ```
/// # #[cfg(feature = "emulate")] {
/// use candle_targeted_dropout::emulate::Gpu;
/// let small = Gpu { smem_optin_per_block: 64 * 1024, l2_bytes: 256 * 1024, ..Gpu::sm86() };
/// assert_eq!(small.sms, 28);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// A name for messages.
    pub name: &'static str,
    /// Compute capability, major and minor.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub sms: u32,
    /// L2 cache in bytes (the long-row kernels process rows in groups of half of it).
    pub l2_bytes: u64,
    /// Shared memory a block may use with the opt-in attribute, in bytes.
    pub smem_optin_per_block: u64,
    /// Shared memory of a multiprocessor, in bytes.
    pub smem_per_sm: u64,
    /// Shared memory the driver reserves per block (1 KB since sm_80).
    pub reserved_smem_per_block: u64,
    /// Resident threads per multiprocessor.
    pub max_threads_per_sm: u32,
    /// Resident blocks per multiprocessor.
    pub max_blocks_per_sm: u32,
    /// 32-bit registers per multiprocessor.
    pub regs_per_sm: u32,
    /// Static shared memory of `tdw_tiny_*` on this architecture, in bytes.
    pub tiny_static_smem: u64,
    /// Static shared memory of `tdw_block_*` on this architecture, in bytes.
    pub block_static_smem: u64,
    /// Registers per thread of `tdw_block_u16`, `tdw_block_u32`, `tdw_block_u64`.
    pub block_regs: [u32; 3],
}

impl Gpu {
    /// An NVIDIA H200 (sm_90): 132 multiprocessors, 50 MB of L2, 227 KB of opt-in shared
    /// memory per block (228 KB per multiprocessor).
    pub fn h200() -> Gpu {
        Gpu {
            name: "H200 (sm_90)",
            compute_capability: (9, 0),
            sms: 132,
            l2_bytes: 50 * 1024 * 1024,
            smem_optin_per_block: 227 * 1024,
            smem_per_sm: 228 * 1024,
            reserved_smem_per_block: 1024,
            max_threads_per_sm: 2048,
            max_blocks_per_sm: 32,
            regs_per_sm: 65536,
            tiny_static_smem: 2048,
            block_static_smem: 2112,
            block_regs: [54, 54, 63],
        }
    }

    /// A small sm_86 GPU (an RTX 3060's numbers): 28 multiprocessors, 3 MB of L2, 99 KB of
    /// opt-in shared memory per block (100 KB per multiprocessor), 1,536 threads per
    /// multiprocessor.
    pub fn sm86() -> Gpu {
        Gpu {
            name: "sm_86 (28 SMs)",
            compute_capability: (8, 6),
            sms: 28,
            l2_bytes: 3 * 1024 * 1024,
            smem_optin_per_block: 99 * 1024,
            smem_per_sm: 100 * 1024,
            reserved_smem_per_block: 1024,
            max_threads_per_sm: 1536,
            max_blocks_per_sm: 16,
            regs_per_sm: 65536,
            tiny_static_smem: 1024,
            block_static_smem: 1088,
            block_regs: [47, 47, 62],
        }
    }

    /// Resident blocks of TD_BLOCK threads per multiprocessor for a kernel of `regs`
    /// registers per thread and `smem` bytes of shared memory (static and dynamic), as
    /// `cuOccupancyMaxActiveBlocksPerMultiprocessor` computes it: the least of the block,
    /// thread, register (allocated per warp in units of 256, in 4 sub-partitions) and shared
    /// memory (the reserve added, in units of 128 bytes) limits.
    pub(crate) fn blocks_per_sm(&self, regs: u32, smem: u64) -> u32 {
        let warps = TD_BLOCK.div_ceil(32);
        let by_threads = self.max_threads_per_sm / TD_BLOCK;
        let regs_per_warp = (regs * 32).div_ceil(256) * 256;
        let by_regs = match regs_per_warp {
            0 => u32::MAX,
            r => (self.regs_per_sm / 4 / r) * 4 / warps,
        };
        let per_block = (smem + self.reserved_smem_per_block).div_ceil(128) * 128;
        let by_smem = if per_block > self.smem_optin_per_block + self.reserved_smem_per_block {
            0
        } else {
            (self.smem_per_sm / per_block) as u32
        };
        self.max_blocks_per_sm
            .min(by_threads)
            .min(by_regs)
            .min(by_smem)
    }

    /// The limits the executor derives from the device, as `crate::cuda` does on a GPU:
    /// the dynamic shared memory each selection kernel may ask for (what its static shared
    /// memory leaves of the opt-in limit, at most what the kernel can use) and the block
    /// kernel's occupancy by KB of dynamic shared memory.
    pub(crate) fn limits(&self) -> Result<Limits> {
        let optin = self.smem_optin_per_block;
        let width = |w: Width| -> Result<WidthLimits> {
            let size = w.size();
            let tiny = optin
                .saturating_sub(self.tiny_static_smem)
                .min(tiny_smem(TD_TINY_ROW as u64, size)) as u32;
            let block = optin
                .saturating_sub(self.block_static_smem)
                .min(TD_BLOCK_ROW_BYTES as u64) as u32;
            let regs = self.block_regs[w.index()];
            let block_per_sm = (0..=block.div_ceil(1024))
                .map(|kb| {
                    let dynamic = (kb * 1024).min(block) as u64;
                    let b = self.blocks_per_sm(regs, self.block_static_smem + dynamic);
                    if b == 0 {
                        bail!(
                            "emulated {}: tdw_block with {regs} registers fits no block on a \
                             multiprocessor with {dynamic} bytes of dynamic shared memory",
                            self.name
                        )
                    }
                    Ok(b)
                })
                .collect::<Result<Vec<u32>>>()?;
            Ok(WidthLimits {
                tiny_smem: tiny,
                block_smem: block,
                block_per_sm,
            })
        };
        Ok(Limits {
            sms: self.sms,
            l2_bytes: self.l2_bytes,
            widths: [width(Width::U16)?, width(Width::U32)?, width(Width::U64)?],
        })
    }
}
