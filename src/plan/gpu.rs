//! A GPU profile: the numbers of a device that the launch plan depends on, and the limits
//! ([`Limits`]) the plan takes from it. The emulator runs with these limits, so that it
//! executes the plan that a GPU of that profile gets.

use super::Limits;
use candle_core::{bail, Result};

/// A GPU as this crate's launch plan sees it. The selection kernels take no dynamic shared
/// memory and size their blocks by the row, so of a device the plan uses only its
/// multiprocessors (the grids of the grid-stride kernels); the other fields describe the
/// device for messages and for tests that explore one that does not exist.
///
/// [`Gpu::h200`] and [`Gpu::sm86`] are the two profiles the crate tests with:
///
/// ```
/// # #[cfg(feature = "emulate")] {
/// use candle_targeted_dropout::emulate::Gpu;
/// let small = Gpu { sms: 2, ..Gpu::sm86() };
/// assert_eq!(small.compute_capability, (8, 6));
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
    /// L2 cache in bytes.
    pub l2_bytes: u64,
    /// Shared memory a block may use with the opt-in attribute, in bytes.
    pub smem_optin_per_block: u64,
    /// Shared memory of a multiprocessor, in bytes.
    pub smem_per_sm: u64,
}

impl Gpu {
    /// An NVIDIA H200 (sm_90, 132 SMs, 50 MB of L2).
    pub fn h200() -> Gpu {
        Gpu {
            name: "H200 (sm_90)",
            compute_capability: (9, 0),
            sms: 132,
            l2_bytes: 50 * 1024 * 1024,
            smem_optin_per_block: 227 * 1024,
            smem_per_sm: 228 * 1024,
        }
    }

    /// A small sm_86 GPU (28 SMs, 3 MB of L2), e.g. an RTX 3060-class card.
    pub fn sm86() -> Gpu {
        Gpu {
            name: "sm_86 (28 SMs)",
            compute_capability: (8, 6),
            sms: 28,
            l2_bytes: 3 * 1024 * 1024,
            smem_optin_per_block: 99 * 1024,
            smem_per_sm: 100 * 1024,
        }
    }

    /// The plan's limits on this device: an error for a profile no plan can run on.
    pub(crate) fn limits(&self) -> Result<Limits> {
        if self.sms == 0 {
            bail!("emulated {}: a GPU with 0 multiprocessors", self.name)
        }
        Ok(Limits { sms: self.sms })
    }
}
