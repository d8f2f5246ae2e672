//! The one masked-output writer of the CPU path: every op (weight, unit, N:M; values, their
//! gradient, the `u8` mask, or the packed bit mask alone or beside the values) writes its
//! output here, from which elements are targeted ([`Targets`]), the values kept ([`Kept`])
//! and the draws.
//!
//! Element `i` of a part becomes `dropped` when it is targeted and its draw (flat index
//! `first_e + i`) falls under alpha, `kept[i]` otherwise; each output element is written once,
//! into uninitialised memory, and with a [`BitsOut`] its bit is set in the same pass. At
//! alpha = 0 the part is a copy and at alpha = 1 a select with no draws; otherwise the Philox
//! words come first, only for the 64- and 32-element batches that hold a targeted element
//! (sixteen or eight blocks in AVX-512 or AVX2 lanes where the processor has them), then one
//! vectorised select per element.

use crate::element::Element;
use crate::philox::{Bernoulli, THRESHOLD_ALWAYS};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// The value each element of a part keeps when it is not dropped.
pub(crate) trait Kept<O>: Copy + Send + Sync {
    /// The `len` values from `start` on (a slice panics when they are not there).
    fn part(self, start: usize, len: usize) -> Self;
    /// The value of element `i`, unchecked, so that the writer's loops vectorise.
    ///
    /// # Safety
    /// `i` is below the `len` of the last [`Kept::part`] that made `self`.
    unsafe fn at(&self, i: usize) -> O;
}

impl<O: Copy + Send + Sync> Kept<O> for &[O] {
    #[inline(always)]
    fn part(self, start: usize, len: usize) -> Self {
        &self[start..start + len]
    }
    #[inline(always)]
    unsafe fn at(&self, i: usize) -> O {
        debug_assert!(i < self.len());
        // SAFETY: `i < self.len()` (the caller's contract).
        unsafe { *self.get_unchecked(i) }
    }
}

/// One value for every element (a mask's 0).
#[derive(Clone, Copy)]
pub(crate) struct Fill<O>(pub O);

impl<O: Copy + Send + Sync> Kept<O> for Fill<O> {
    #[inline(always)]
    fn part(self, _: usize, _: usize) -> Self {
        self
    }
    #[inline(always)]
    unsafe fn at(&self, _: usize) -> O {
        self.0
    }
}

/// Which elements of a part are targeted.
pub(crate) trait Targets: Copy {
    /// The `len` elements from `start` on (a slice panics when they are not there).
    fn part(self, start: usize, len: usize) -> Self;
    /// Whether element `i` is targeted, unchecked, so that the writer's loops vectorise.
    ///
    /// # Safety
    /// `i` is below the `len` of the last [`Targets::part`] that made `self`.
    unsafe fn at(&self, i: usize) -> bool;
    /// Whether any element of `r` is targeted (a fold, which vectorises).
    ///
    /// # Safety
    /// As [`Targets::at`], for every index of `r`.
    #[inline(always)]
    unsafe fn any(&self, r: Range<usize>) -> bool {
        // SAFETY: every index of `r` is in range (the caller's contract).
        r.fold(false, |a, i| a | unsafe { self.at(i) })
    }
}

/// A segment of a row below a limit: element `i` is targeted iff `row[i].key() < lim` (a
/// row's [`crate::select::Cut`] is two such segments).
#[derive(Clone, Copy)]
pub(crate) struct Below<'a, T: Element> {
    pub row: &'a [T],
    pub lim: T::Key,
}

impl<T: Element> Targets for Below<'_, T> {
    #[inline(always)]
    fn part(self, start: usize, len: usize) -> Self {
        Below {
            row: &self.row[start..start + len],
            lim: self.lim,
        }
    }
    #[inline(always)]
    unsafe fn at(&self, i: usize) -> bool {
        debug_assert!(i < self.row.len());
        // SAFETY: `i < self.row.len()` (the caller's contract).
        unsafe { self.row.get_unchecked(i) }.key() < self.lim
    }
}

/// Flags, one byte an element (non-zero: targeted), as the rank tiles write them.
#[derive(Clone, Copy)]
pub(crate) struct Flags<'a>(pub &'a [u8]);

impl Targets for Flags<'_> {
    #[inline(always)]
    fn part(self, start: usize, len: usize) -> Self {
        Flags(&self.0[start..start + len])
    }
    #[inline(always)]
    unsafe fn at(&self, i: usize) -> bool {
        debug_assert!(i < self.0.len());
        // SAFETY: `i < self.0.len()` (the caller's contract).
        unsafe { *self.0.get_unchecked(i) != 0 }
    }
}

/// Every element or none (a unit, whose draw is decided already; nothing targeted).
#[derive(Clone, Copy)]
pub(crate) struct All(pub bool);

impl Targets for All {
    #[inline(always)]
    fn part(self, _: usize, _: usize) -> Self {
        self
    }
    #[inline(always)]
    unsafe fn at(&self, _: usize) -> bool {
        self.0
    }
}

/// Where a writer puts the bit mask of the dropped elements as it writes them (DESIGN.md's
/// kept mask, `Buf::Bits`): bit `e % 32` of word `e / 32` is set iff element `e` (its index
/// within the tensor: its draw index `first_e + i` less `base`) is dropped. The words must
/// start at 0: a part stores the words that lie wholly inside it and ors in its first and
/// last words, which it may share with the parts beside it (parts run on several threads).
#[derive(Clone, Copy)]
pub(crate) struct BitsOut<'a> {
    pub words: &'a [AtomicU32],
    pub base: u64,
}

/// `n` bits' words, all 0, for a [`BitsOut`].
pub(crate) fn zeroed_words(n: usize) -> Vec<AtomicU32> {
    // `vec![0; _]` allocates zeroed memory; the map is an in-place collect.
    vec![0u32; n.div_ceil(32)]
        .into_iter()
        .map(AtomicU32::new)
        .collect()
}

/// The words of [`zeroed_words`] once written.
pub(crate) fn into_words(v: Vec<AtomicU32>) -> Vec<u32> {
    v.into_iter().map(AtomicU32::into_inner).collect()
}

/// What a part writes: the values kept, the value of a dropped element (+0 or the mask's 1),
/// which elements are targeted, the flat index (draw index) of the first, and where the bit
/// mask of the dropped elements goes, if anywhere (`O = ()` with `Fill(())` writes the bit
/// mask alone).
#[derive(Clone, Copy)]
pub(crate) struct Part<'b, O, K, G> {
    pub kept: K,
    pub dropped: O,
    pub targets: G,
    pub first_e: u64,
    pub bits: Option<BitsOut<'b>>,
}

/// Writes every element of `out` (see the module): targeted elements whose draw falls under
/// alpha become `part.dropped`, the others `part.kept`. `words` is the caller's scratch for
/// the draws, reused across parts. With AVX-512F the same code is compiled for AVX-512 (the
/// Philox blocks sixteen and eight at a time in 64-bit lanes, `philox512.rs`), with AVX2 for
/// AVX2 (the selects in 256-bit vectors, the Philox blocks eight lanes at a time, inlined);
/// elsewhere for the baseline with scalar Philox. The draws are the same bits on each.
#[inline]
pub(crate) fn write_masked<O: Copy, K: Kept<O>, G: Targets>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, O, K, G>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2")
    {
        // SAFETY: the processor has AVX-512F and AVX2, the features the function enables.
        return unsafe { write_masked_avx512(out, part, draws, words) };
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { write_masked_avx2(out, part, draws, words) };
    }
    write_masked_body(
        out,
        part,
        draws,
        words,
        |c| draws.blocks8_scalar(c),
        |c| blocks16_of(|c| draws.blocks8_scalar(c), c),
    )
}

/// Sixteen blocks as two calls of an eight-block function.
#[inline(always)]
fn blocks16_of(blocks8: impl Fn(u64) -> [u32; 32], c: u64) -> [u32; 64] {
    let mut w = [0u32; 64];
    w[..32].copy_from_slice(&blocks8(c));
    w[32..].copy_from_slice(&blocks8(c.wrapping_add(8)));
    w
}

/// [`write_masked`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn write_masked_avx2<O: Copy, K: Kept<O>, G: Targets>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, O, K, G>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    // SAFETY (both closures): this function only runs on processors with AVX2.
    let blocks8 = |c| unsafe { crate::philox::x86::blocks8_avx2(draws, c) };
    write_masked_body(out, part, draws, words, blocks8, |c| {
        blocks16_of(blocks8, c)
    })
}

/// [`write_masked`] compiled for AVX-512F (and AVX2).
///
/// # Safety
/// The processor must support AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn write_masked_avx512<O: Copy, K: Kept<O>, G: Targets>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, O, K, G>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    use super::philox512::{blocks16_avx512, blocks8_avx512};
    write_masked_body(
        out,
        part,
        draws,
        words,
        // SAFETY (both closures): this function only runs on processors with AVX-512F.
        |c| unsafe { blocks8_avx512(draws, c) },
        |c| unsafe { blocks16_avx512(draws, c) },
    )
}

/// Fills `words[..len]` (returned) with the Philox words of flat indices `first_e ..
/// first_e + len` where they are needed: the elements before the first aligned group of four
/// and after the last one a draw each, whole groups sixteen blocks (64 elements) at a time,
/// then eight (32 elements), the groups left one block at a time, each only when
/// `targets.any(range)` says one of its elements is targeted (the words of the others are
/// left as they were and must not be looked at). `blocks8(c)` and `blocks16(c)` give the
/// words of Philox blocks `c .. c + 8` and `c .. c + 16`. `targets` is a part of `len`
/// elements.
#[inline(always)]
fn draw_targeted<'w, G: Targets>(
    words: &'w mut Vec<u32>,
    first_e: u64,
    len: usize,
    draws: &Bernoulli,
    (blocks8, blocks16): (&impl Fn(u64) -> [u32; 32], &impl Fn(u64) -> [u32; 64]),
    targets: G,
) -> &'w mut [u32] {
    if words.len() < len {
        words.resize(len, 0);
    }
    let words = &mut words[..len];
    let head = (((4 - first_e % 4) % 4) as usize).min(len);
    let g0 = (first_e + head as u64) / 4;
    let groups = (len - head) / 4;
    let body = head + 4 * groups;
    for i in (0..head).chain(body..len) {
        // SAFETY: i < len, the prefix's length.
        if unsafe { targets.at(i) } {
            words[i] = draws.draw(first_e + i as u64);
        }
    }
    let big = groups / 16;
    for (b, w) in words[head..head + 64 * big]
        .chunks_exact_mut(64)
        .enumerate()
    {
        let i = head + 64 * b;
        // SAFETY: i + 64 <= head + 64 * big <= len.
        if unsafe { targets.any(i..i + 64) } {
            w.copy_from_slice(&blocks16(g0 + 16 * b as u64));
        }
    }
    // The groups left: eight blocks at a time (at most one batch), then one at a time.
    let batches = (groups - 16 * big) / 8;
    for k in 0..batches {
        let g = 16 * big + 8 * k;
        let i = head + 4 * g;
        // SAFETY: i + 32 <= head + 4 * groups <= len.
        if unsafe { targets.any(i..i + 32) } {
            words[i..i + 32].copy_from_slice(&blocks8(g0 + g as u64));
        }
    }
    for g in 16 * big + 8 * batches..groups {
        let i = head + 4 * g;
        // SAFETY: i + 4 <= body <= len.
        if unsafe { targets.any(i..i + 4) } {
            words[i..i + 4].copy_from_slice(&draws.block(g0 + g as u64));
        }
    }
    words
}

/// The body of [`write_masked`]; `blocks8(c)` gives the words of Philox blocks `c .. c + 8`.
/// Every loop loads the kept value unconditionally, so that the compiler vectorises the
/// selects.
#[inline(always)]
fn write_masked_body<O: Copy, K: Kept<O>, G: Targets>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, O, K, G>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
    blocks8: impl Fn(u64) -> [u32; 32],
    blocks16: impl Fn(u64) -> [u32; 64],
) {
    let t = draws.threshold;
    if out.len() <= SPAN || t == 0 || t == THRESHOLD_ALWAYS {
        return write_span(out, part, draws, words, (&blocks8, &blocks16));
    }
    // A long part with draws: spans of `SPAN`, so that the words of the draws stay in the
    // L1 cache between the draws and the selects.
    for (j, o) in out.chunks_mut(SPAN).enumerate() {
        let (start, len) = (j * SPAN, o.len());
        let span = Part {
            kept: part.kept.part(start, len),
            targets: part.targets.part(start, len),
            first_e: part.first_e + start as u64,
            ..part
        };
        write_span(o, span, draws, words, (&blocks8, &blocks16));
    }
}

/// Elements of a span of a long part (a multiple of 64).
const SPAN: usize = 4096;

/// One span of [`write_masked_body`].
#[inline(always)]
fn write_span<O: Copy, K: Kept<O>, G: Targets>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, O, K, G>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
    (blocks8, blocks16): (&impl Fn(u64) -> [u32; 32], &impl Fn(u64) -> [u32; 64]),
) {
    let len = out.len();
    let kept = part.kept.part(0, len);
    let targets = part.targets.part(0, len);
    let dropped = part.dropped;
    let t = draws.threshold;
    // SAFETY (every `at` below): `i < len = out.len()`, the length of both prefixes.
    if t == 0 {
        // Nothing dropped: the bits stay 0.
        for (i, o) in out.iter_mut().enumerate() {
            o.write(unsafe { kept.at(i) });
        }
        return;
    }
    if t == THRESHOLD_ALWAYS {
        match part.bits {
            None => {
                for (i, o) in out.iter_mut().enumerate() {
                    let (v, d) = unsafe { (kept.at(i), targets.at(i)) };
                    o.write(if d { dropped } else { v });
                }
            }
            Some(b) => with_bits(
                out,
                kept,
                dropped,
                part.first_e - b.base,
                b.words,
                |i| unsafe { targets.at(i) },
            ),
        }
        return;
    }
    let words = draw_targeted(
        words,
        part.first_e,
        len,
        draws,
        (blocks8, blocks16),
        targets,
    );
    match part.bits {
        None => {
            for ((i, o), &w) in out.iter_mut().enumerate().zip(&*words) {
                let (v, f) = unsafe { (kept.at(i), targets.at(i)) };
                let d = f & ((w >> 8) < t);
                o.write(if d { dropped } else { v });
            }
        }
        Some(b) => {
            let words = &*words;
            with_bits(out, kept, dropped, part.first_e - b.base, b.words, |i| {
                // SAFETY: `i < len`, and `words` has `len` words.
                let w = unsafe { *words.get_unchecked(i) };
                (unsafe { targets.at(i) }) & ((w >> 8) < t)
            })
        }
    }
}

/// The selects of [`write_masked_body`] with the bit mask: element `i` of `out` (index `e0 +
/// i` within the tensor) is dropped iff `drops(i)`; the bits go to `bits` (see [`BitsOut`]),
/// a word at a time: the part's elements up to the first multiple of 32, whole words, the
/// rest.
#[inline(always)]
fn with_bits<O: Copy, K: Kept<O>>(
    out: &mut [MaybeUninit<O>],
    kept: K,
    dropped: O,
    e0: u64,
    bits: &[AtomicU32],
    drops: impl Fn(usize) -> bool,
) {
    let len = out.len();
    // The elements `a .. a + o.len()`, their bits from bit 0 of the word returned.
    let chunk = |o: &mut [MaybeUninit<O>], a: usize| -> u32 {
        let mut m = 0u32;
        for (j, o) in o.iter_mut().enumerate() {
            let d = drops(a + j);
            // SAFETY: `a + j < len`, the length of `kept`.
            o.write(if d {
                dropped
            } else {
                unsafe { kept.at(a + j) }
            });
            m |= (d as u32) << j;
        }
        m
    };
    let head = (((32 - e0 % 32) % 32) as usize).min(len);
    let (ho, rest) = out.split_at_mut(head);
    if head > 0 {
        let m = chunk(ho, 0);
        if m != 0 {
            bits[(e0 / 32) as usize].fetch_or(m << (e0 % 32), Relaxed);
        }
    }
    // From here on every chunk starts a word.
    let w0 = ((e0 + head as u64) / 32) as usize;
    let mut whole = rest.chunks_exact_mut(32);
    for (c, o) in (&mut whole).enumerate() {
        let m = chunk(o, head + 32 * c);
        // The word lies wholly inside this part: no other part writes it.
        bits[w0 + c].store(m, Relaxed);
    }
    let full = (len - head) / 32;
    let tail = whole.into_remainder();
    if !tail.is_empty() {
        let m = chunk(tail, head + 32 * full);
        if m != 0 {
            bits[w0 + full].fetch_or(m, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init<O: Copy>(v: Vec<MaybeUninit<O>>) -> Vec<O> {
        // SAFETY: every element was initialised (to a marker, then written).
        v.iter().map(|x| unsafe { x.assume_init() }).collect()
    }

    /// The portable writer (scalar Philox), the AVX2 one and the dispatching one (AVX-512
    /// here) against a direct evaluation of the contract, over part starts of every
    /// alignment, lengths around the 32- and 64-element batches and past a span, limits at the
    /// row's own keys, flags, and thresholds 0, 2^24 and in between; kept values from a slice
    /// and a fill; values with the bit mask, and the bit mask alone.
    #[test]
    fn parts_match_the_contract() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in [
            0usize, 1, 3, 4, 5, 31, 32, 33, 35, 36, 64, 67, 100, 257, 4163, 8193,
        ] {
            for first_e in [0u64, 1, 2, 3, 4, 29, (1 << 34) - 3, u64::MAX / 2 - 70] {
                let row: Vec<f32> = (0..len).map(|_| (next() % 200) as f32 - 100.0).collect();
                let kept: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
                // The limit is a key of the row (the `kth` of a cut) or one above it.
                let lim = match len {
                    0 => 0,
                    _ => row[(next() % len as u64) as usize].key() + (next() % 2) as u32,
                };
                let flags: Vec<u8> = (0..len).map(|_| (next() % 3 == 0) as u8).collect();
                for alpha in [0.0, 1.0, 0.5, 0.1] {
                    let draws = Bernoulli::new(next(), next(), alpha);
                    let what = format!("len {len} first_e {first_e} lim {lim} alpha {alpha}");
                    let contract = |t: &dyn Fn(usize) -> bool, kept: &dyn Fn(usize) -> f32| {
                        (0..len)
                            .map(|i| {
                                if t(i) && draws.drops(first_e + i as u64) {
                                    -7.0
                                } else {
                                    kept(i)
                                }
                            })
                            .collect::<Vec<f32>>()
                    };
                    let mut words = Vec::new();
                    // Mode 0: the dispatch (AVX-512 or AVX2 where present), 1: the portable
                    // body (scalar Philox), 2: the AVX2 writer where the processor has AVX2.
                    let mut run = |part: Part<f32, &[f32], Below<f32>>, mode: u8| {
                        let mut o = vec![MaybeUninit::new(-1.0f32); len];
                        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                        if mode == 2 && std::arch::is_x86_feature_detected!("avx2") {
                            // SAFETY: the processor has AVX2.
                            unsafe { write_masked_avx2(&mut o, part, &draws, &mut words) };
                            return init(o);
                        }
                        if mode == 1 {
                            let b8 = |c| draws.blocks8_scalar(c);
                            write_masked_body(&mut o, part, &draws, &mut words, b8, |c| {
                                blocks16_of(b8, c)
                            });
                        } else {
                            write_masked(&mut o, part, &draws, &mut words);
                        }
                        init(o)
                    };
                    let below = Below { row: &row, lim };
                    let part = Part {
                        kept: &kept[..],
                        dropped: -7.0,
                        targets: below,
                        first_e,
                        bits: None,
                    };
                    let want = contract(&|i| row[i].key() < lim, &|i| kept[i]);
                    for mode in [0, 1, 2] {
                        assert_eq!(run(part, mode), want, "below, mode {mode}, {what}");
                    }
                    // With the bit mask: the part is elements `off .. off + len` of a tensor
                    // whose other bits (random) stay as they were.
                    let off = (first_e % 41) as usize;
                    let outside: Vec<u32> = (0..(off + len).div_ceil(32) + 1)
                        .map(|_| next() as u32)
                        .collect();
                    let inside = |e: usize| (off..off + len).contains(&e);
                    let bit = |v: &[u32], e: usize| (v[e / 32] >> (e % 32)) & 1 == 1;
                    let mut want_bits = outside.clone();
                    for e in 0..32 * outside.len() {
                        let d = inside(e) && want[e - off] == -7.0;
                        if inside(e) {
                            want_bits[e / 32] &= !(1 << (e % 32));
                            want_bits[e / 32] |= (d as u32) << (e % 32);
                        }
                    }
                    let start = || -> Vec<AtomicU32> {
                        (0..outside.len())
                            .map(|w| {
                                let m = (0..32)
                                    .filter(|j| !inside(32 * w + j))
                                    .fold(0u32, |m, j| m | (1 << j));
                                AtomicU32::new(outside[w] & m)
                            })
                            .collect()
                    };
                    for mode in [0, 1, 2] {
                        let b = start();
                        let part = Part {
                            bits: Some(BitsOut {
                                words: &b,
                                base: first_e - off as u64,
                            }),
                            ..part
                        };
                        assert_eq!(run(part, mode), want, "values + bits, {what}");
                        let got = into_words(b);
                        for e in 0..32 * got.len() {
                            assert_eq!(
                                bit(&got, e),
                                bit(&want_bits, e),
                                "bit {e}, part {off}.., mode {mode}, {what}"
                            );
                        }
                    }
                    // The bits alone (`O = ()`).
                    let b = start();
                    let mut o = vec![MaybeUninit::new(()); len];
                    let part = Part {
                        kept: Fill(()),
                        dropped: (),
                        targets: below,
                        first_e,
                        bits: Some(BitsOut {
                            words: &b,
                            base: first_e - off as u64,
                        }),
                    };
                    write_masked(&mut o, part, &draws, &mut words);
                    assert_eq!(into_words(b), want_bits, "bits alone, {what}");
                    // Flags and a fill (a mask: 0 kept, 1 dropped).
                    let mut o = vec![MaybeUninit::new(9u8); len];
                    let part = Part {
                        kept: Fill(0u8),
                        dropped: 1u8,
                        targets: Flags(&flags),
                        first_e,
                        bits: None,
                    };
                    write_masked(&mut o, part, &draws, &mut Vec::new());
                    let want: Vec<u8> = (0..len)
                        .map(|i| (flags[i] != 0 && draws.drops(first_e + i as u64)) as u8)
                        .collect();
                    assert_eq!(init(o), want, "flags, {what}");
                }
            }
        }
    }
}
