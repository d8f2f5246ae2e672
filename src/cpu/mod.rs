//! The host implementation of [`TargetedOp`], generic over the element type: the CPU custom
//! ops call [`TargetedOp::cpu`]; the CUDA kernels compute the same bits.
//!
//! Each op finds which elements are targeted, its own way, and hands them to the one
//! masked-output writer, `mask`, which draws and writes every output element once:
//! - `weight`: each row's cut (`select::row_cut`: the k-th key and the tie cut as an index;
//!   rows of at most 64 by ranks in AVX2 lanes, longer ones by the radix select), a few long
//!   rows over the whole pool;
//! - `unit`: the unit scores, the radix select over the row of scores, a draw per unit;
//! - `nm`: 16 groups of `m` side by side, each element's rank counted by comparisons.
//!
//! The modules import `mask` and `select`, never each other.

pub(crate) mod held;
mod mask;
mod nm;
#[cfg(target_arch = "x86_64")]
mod philox512;
mod unit;
mod weight;

pub(crate) use unit::unit_scores;
#[cfg(test)]
pub(crate) use unit::SCORE_LANES;

use crate::config::NmPattern;
use crate::element::Scored;
use crate::op::{filters, DropoutKind, Output, TargetedOp};
use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use mask::{into_words, zeroed_words, Fill, Kept};
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU32;

/// The contiguous elements of a layout (the public functions make `w` contiguous first, the
/// backward pass its gradient).
fn contiguous<'a, T>(op: &TargetedOp, data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{}: internal error, an input is not contiguous", op.name()),
    }
}

impl TargetedOp {
    /// The selection on `w` (rows of `n`, N:M groups `s` apart) written into `out`: the kept
    /// values, or `dropped` where an element is dropped; the bit mask of the dropped elements
    /// into `bits` (zeroed, `ceil(len / 32)` words), if given.
    fn write<T: Scored, O: Copy + Send + Sync, K: Kept<O>>(
        &self,
        w: &[T],
        out: &mut [MaybeUninit<O>],
        kd: (K, O),
        (n, s): (usize, usize),
        bits: Option<&[AtomicU32]>,
    ) {
        match self.kind {
            DropoutKind::Weight => weight::weight_dropout_into(w, out, kd, n, self, bits),
            DropoutKind::Unit => {
                let units = unit::unit_dropped(w, n, self.gamma, &self.draws);
                unit::unit_dropout_into(out, kd, n, &units, bits)
            }
            DropoutKind::Nm { n, m } => {
                nm::nm_into(w, out, kd, (NmPattern { n, m }, s), &self.draws, bits)
            }
        }
    }

    /// The selection on `w` (rows of `n`), written over `kept` (the values) or as a mask
    /// (`O = u8`, 1 = dropped) when `kept` is `None`; with `bits`, also the bit mask of the
    /// dropped elements (see `mask::BitsOut`) into them.
    fn run<T: Scored, O: Copy + Send + Sync + Default>(
        &self,
        w: &[T],
        kept: Option<&[O]>,
        dropped: O,
        (n, s): (usize, usize),
        bits: Option<&[AtomicU32]>,
    ) -> Vec<O> {
        let len = w.len();
        let mut out: Vec<O> = Vec::with_capacity(len);
        if n == 0 {
            // No filter of any length: no element.
            return out;
        }
        debug_assert_eq!(len % n, 0, "rows of {n}");
        let spare = &mut out.spare_capacity_mut()[..len];
        match kept {
            Some(v) => self.write(w, spare, (&v[..len], dropped), (n, s), bits),
            None => self.write(w, spare, (Fill(O::default()), dropped), (n, s), bits),
        }
        // SAFETY: the capacity is at least `len`, and every path writes every one of the
        // `len` elements of `spare` (every row of `n` elements, `len` a multiple of `n`)
        // before this.
        unsafe { out.set_len(len) };
        out
    }

    /// `(n, s)` of a layout: the filters' length and the N:M groups' stride (DESIGN.md, "N:M
    /// targeted dropout"; the functions have checked the rank).
    fn geometry(shape: &Shape) -> (usize, usize) {
        let (_, n) = filters(shape);
        let (_, _, s) = crate::op::nm_geometry(shape.dims()).unwrap_or((0, 0, 1));
        (n, s)
    }

    /// The op on the CPU: selection on `w`, values from `vals` (the backward pass) or `w`,
    /// or the mask; `wrap` makes the values a storage of `T`.
    pub(crate) fn cpu<T: Scored>(
        &self,
        w: &[T],
        wl: &Layout,
        vals: Option<(&[T], &Layout)>,
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> Result<CpuStorage> {
        let w = contiguous(self, w, wl)?;
        let ns = Self::geometry(wl.shape());
        Ok(match (self.output, vals) {
            (Output::Mask, _) => CpuStorage::U8(self.run::<T, u8>(w, None, 1, ns, None)),
            (Output::Values, None) => wrap(self.run(w, Some(w), T::ZERO, ns, None)),
            (Output::Values, Some((v, vl))) => {
                let v = contiguous(self, v, vl)?;
                wrap(self.run(w, Some(v), T::ZERO, ns, None))
            }
        })
    }

    /// The op's values on the CPU together with the bit mask of the dropped elements (bit
    /// `e % 32` of word `e / 32`, `e` the flat index within `w`), written in the same pass.
    pub(crate) fn cpu_kept<T: Scored>(
        &self,
        w: &[T],
        wl: &Layout,
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> Result<(CpuStorage, Vec<u32>)> {
        let w = contiguous(self, w, wl)?;
        let bits = zeroed_words(w.len());
        let out = self.run(w, Some(w), T::ZERO, Self::geometry(wl.shape()), Some(&bits));
        Ok((wrap(out), into_words(bits)))
    }

    /// The bit mask of the elements of `w` (contiguous, of shape `shape`) that the op drops,
    /// with no other output: one pass that draws and packs.
    pub(crate) fn dropped_bits<T: Scored>(&self, w: &[T], shape: &Shape) -> Vec<u32> {
        let bits = zeroed_words(w.len());
        let _: Vec<()> = self.run(w, None, (), Self::geometry(shape), Some(&bits));
        into_words(bits)
    }

    /// One step's drop of `w` in place: the bit mask of the dropped elements and their
    /// values moved out in flat order (+0.0 left in their place). Weight dropout does both
    /// row by row ([`weight::weight_drop_in_place`]: the row still in the cache); the others
    /// write the bits in one pass, then move the values ([`held::take_dropped`]).
    pub(crate) fn drop_in_place<T: Scored + held::Held>(
        &self,
        w: &mut [T],
        shape: &Shape,
    ) -> (Vec<u32>, Vec<T>) {
        let (n, _) = Self::geometry(shape);
        if self.kind == DropoutKind::Weight && weight::weight_in_place_fits(w.len(), n) {
            let bits = zeroed_words(w.len());
            let values = weight::weight_drop_in_place(w, n, self, &bits);
            return (into_words(bits), values);
        }
        let bits = self.dropped_bits(w, shape);
        let values = held::take_dropped(w, &bits);
        (bits, values)
    }
}
