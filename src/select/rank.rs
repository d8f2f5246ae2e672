//! Short groups selected side by side: the targeted flags of [`LANES`] groups of at most
//! [`MAX_GROUP`] elements at once, one group a vector lane, with no histogram, no per-group
//! branch and no per-group dispatch. The weight path's short rows (a row is one group, `k`
//! targeted) and every N:M group (`m - n` targeted) go through [`flag_groups_dispatch`].
//!
//! A tile holds the keys transposed (`keys[j][l]`: element `j` of group `l`) as signed
//! integers (every key has its sign bit clear, so the signed order is the key order): i32
//! for keys of at most 32 bits, two AVX2 vectors per element of 16 groups; i64 for f64. A
//! copy is sorted by Batcher's odd-even merge network on the next power of two (a vector min
//! and max per comparator: 543 comparators for 64, 5 for 4; the padding sorts last), the k-th
//! key of every lane is read off it, and one pass in element order flags the keys below it
//! and the first `k - less` of its ties: exactly the `k` smallest `(key, index)`.
//! (Counting each element's rank by comparisons, the first version, costs `g - 1`
//! comparisons per element, 63 for rows of 64, against about 8.5 here.)

use crate::element::{Element, RadixKey};

/// Groups ranked side by side in one tile.
const LANES: usize = 16;

/// The longest group a tile ranks (ranks and keys stay on the stack).
pub(crate) const MAX_GROUP: usize = 64;

/// One tile: `lanes` groups of `g` elements, element `j` of lane `l` at `base + l * ls + j *
/// js` of the row data; `targeted` of each group are flagged.
#[derive(Clone, Copy, Debug)]
struct Tile {
    base: usize,
    /// The distance between lanes (groups) in memory.
    ls: usize,
    /// The distance between a group's elements in memory.
    js: usize,
    /// Groups in the tile, `1 ..= LANES`.
    lanes: usize,
    /// Elements per group, `1 ..= MAX_GROUP`.
    g: usize,
    /// How many of each group are targeted, `0 ..= g`.
    targeted: usize,
}

/// A lane value: the key, order preserved, as a signed integer of the key's width class (i32
/// for keys of at most 32 bits, i64 for 64-bit keys), so that the min / max of a lane are
/// the signed vector instructions.
trait LaneKey: Copy + Default + Ord + Send + Sync + 'static {
    /// Above every key (the padding of a group shorter than its network).
    const PAD: Self;
    fn of<K: RadixKey>(k: K) -> Self;
}
impl LaneKey for i32 {
    // Keys of at most 32 bits have the sign bit clear: at most 2^31 - 1, which the padding
    // may equal (then it ties with the largest NaN, and the k-th value is the same).
    const PAD: Self = i32::MAX;
    #[inline(always)]
    fn of<K: RadixKey>(k: K) -> Self {
        k.to_u64() as i32
    }
}
impl LaneKey for i64 {
    const PAD: Self = i64::MAX;
    #[inline(always)]
    fn of<K: RadixKey>(k: K) -> Self {
        k.to_u64() as i64
    }
}

/// Batcher's odd-even merge sort network on `p` (a power of two) wires: the comparators
/// `(a, b)`, `a < b`, in order (543 for 64 wires, 5 for 4).
fn network(p: usize) -> Vec<(u8, u8)> {
    let mut pairs = Vec::new();
    let mut q = 1;
    while q < p {
        let mut k = q;
        while k >= 1 {
            let mut j = k % q;
            while j + k < p {
                for i in 0..k.min(p - j - k) {
                    if (i + j) / (2 * q) == (i + j + k) / (2 * q) {
                        pairs.push(((i + j) as u8, (i + j + k) as u8));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        q *= 2;
    }
    pairs
}

/// The networks on 1, 2, 4, ... [`MAX_GROUP`] wires, built once.
fn networks() -> &'static [Vec<(u8, u8)>] {
    static NETS: std::sync::OnceLock<Vec<Vec<(u8, u8)>>> = std::sync::OnceLock::new();
    NETS.get_or_init(|| {
        (0..=MAX_GROUP.trailing_zeros())
            .map(|b| network(1 << b))
            .collect()
    })
}

/// A tile's lanes: `keys[j][l]` is element `j` of group `l`; rows `g ..` hold the padding.
type Lanes<L> = [[L; LANES]; MAX_GROUP];

/// The scratch of a run of tiles: the keys in lanes and their sorted copy.
struct TileScratch<L> {
    keys: Box<Lanes<L>>,
    sorted: Box<Lanes<L>>,
    flags: Box<Lanes<u8>>,
}

impl<L: LaneKey> TileScratch<L> {
    fn new() -> Self {
        TileScratch {
            keys: Box::new([[L::PAD; LANES]; MAX_GROUP]),
            sorted: Box::new([[L::PAD; LANES]; MAX_GROUP]),
            flags: Box::new([[0; LANES]; MAX_GROUP]),
        }
    }
}

/// Sets `flags` at the tile's places: 1 where the element is among the `targeted` smallest
/// `(key, index)` of its group, 0 elsewhere. `x` and `flags` are indexed alike.
///
/// Per lane: the keys sorted by the network (a min and a max of whole vectors per
/// comparator), the k-th key read off the sorted copy, then one pass in element order flags
/// the keys below it and, of its ties, the first `k - less`.
#[inline(always)]
fn flag_tile<T: Element, L: LaneKey>(
    x: &[T],
    flags: &mut [u8],
    tile: Tile,
    net: &[(u8, u8)],
    s: &mut TileScratch<L>,
) {
    let Tile {
        base,
        ls,
        js,
        lanes,
        g,
        targeted,
    } = tile;
    let p = g.next_power_of_two();
    let (keys, sorted) = (&mut *s.keys, &mut *s.sorted);
    if targeted == 0 || targeted >= g {
        let f = (targeted != 0) as u8;
        for l in 0..lanes {
            for j in 0..g {
                flags[base + l * ls + j * js] = f;
            }
        }
        return;
    }
    // Read in memory order: a group at a time when its elements are contiguous (rows),
    // element j of every lane at a time otherwise (the lanes are contiguous).
    if js == 1 {
        for l in 0..lanes {
            let group = &x[base + l * ls..base + l * ls + g];
            for (kj, v) in keys.iter_mut().zip(group) {
                kj[l] = L::of(v.key());
            }
        }
    } else {
        for (j, kj) in keys[..g].iter_mut().enumerate() {
            let at = base + j * js;
            for (k, v) in kj[..lanes].iter_mut().zip(&x[at..at + lanes]) {
                *k = L::of(v.key());
            }
        }
    }
    sorted[..p].copy_from_slice(&keys[..p]);
    for &(a, b) in net {
        let (lo, hi) = sorted.split_at_mut(b as usize);
        let (va, vb) = (&mut lo[a as usize], &mut hi[0]);
        for l in 0..LANES {
            let (u, v) = (va[l], vb[l]);
            va[l] = u.min(v);
            vb[l] = u.max(v);
        }
    }
    let kth = sorted[targeted - 1];
    // take = targeted - #(key < kth): how many of the ties are targeted, in index order.
    let mut take = [targeted as i32; LANES];
    for kj in &keys[..g] {
        for l in 0..LANES {
            take[l] -= (kj[l] < kth[l]) as i32;
        }
    }
    let mut seen = [0i32; LANES];
    let fl = &mut *s.flags;
    for (kj, f) in keys[..g].iter().zip(fl.iter_mut()) {
        for l in 0..LANES {
            let eq = kj[l] == kth[l];
            f[l] = ((kj[l] < kth[l]) | (eq & (seen[l] < take[l]))) as u8;
            seen[l] += eq as i32;
        }
    }
    // Written in memory order, as read.
    if js == 1 {
        for l in 0..lanes {
            let group = &mut flags[base + l * ls..base + l * ls + g];
            for (o, f) in group.iter_mut().zip(fl.iter()) {
                *o = f[l];
            }
        }
    } else {
        for (j, f) in fl[..g].iter().enumerate() {
            let at = base + j * js;
            flags[at..at + lanes].copy_from_slice(&f[..lanes]);
        }
    }
}

/// The targeted flags of every group of `x`, seen as slabs of `g * s` elements: group `(slab,
/// p)` (`p < s`) is the `g` elements `slab * g * s + p + j * s`, `j < g` (`x.len()` a
/// multiple of `g * s`, `g <= MAX_GROUP`). `s = 1`: consecutive rows of `g`, [`LANES`] rows a
/// tile; otherwise [`LANES`] consecutive positions `p` of one slab a tile.
#[inline(always)]
fn flag_groups<T: Element>(x: &[T], flags: &mut [u8], g: usize, s: usize, targeted: usize) {
    if <T::Key as RadixKey>::BITS <= 32 {
        flag_groups_in::<T, i32>(x, flags, g, s, targeted)
    } else {
        flag_groups_in::<T, i64>(x, flags, g, s, targeted)
    }
}

/// [`flag_groups`] with lane values `L`.
#[inline(always)]
fn flag_groups_in<T: Element, L: LaneKey>(
    x: &[T],
    flags: &mut [u8],
    g: usize,
    s: usize,
    targeted: usize,
) {
    if g == 0 || x.is_empty() {
        return;
    }
    assert!(g <= MAX_GROUP, "groups of {g} (at most {MAX_GROUP})");
    let net = &networks()[g.next_power_of_two().trailing_zeros() as usize];
    let mut scratch = TileScratch::<L>::new();
    if s == 1 {
        let rows = x.len() / g;
        for r0 in (0..rows).step_by(LANES) {
            let tile = Tile {
                base: r0 * g,
                ls: g,
                js: 1,
                lanes: LANES.min(rows - r0),
                g,
                targeted,
            };
            flag_tile(x, flags, tile, net, &mut scratch);
        }
    } else {
        for slab in (0..x.len()).step_by(g * s) {
            for p0 in (0..s).step_by(LANES) {
                let tile = Tile {
                    base: slab + p0,
                    ls: 1,
                    js: s,
                    lanes: LANES.min(s - p0),
                    g,
                    targeted,
                };
                flag_tile(x, flags, tile, net, &mut scratch);
            }
        }
    }
}

/// The targeted flags of every group of `x` (see [`flag_groups`]: slabs of `g * s`, groups
/// of `g` elements `s` apart, `targeted` of each flagged), compiled for AVX2 where the
/// processor has it (the rank loops in 256-bit vectors), for the baseline elsewhere. Rows of
/// `g` are `s = 1`.
pub(crate) fn flag_groups_dispatch<T: Element>(
    x: &[T],
    flags: &mut [u8],
    g: usize,
    s: usize,
    targeted: usize,
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { flag_groups_avx2(x, flags, g, s, targeted) };
    }
    flag_groups(x, flags, g, s, targeted)
}

/// [`flag_groups`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn flag_groups_avx2<T: Element>(
    x: &[T],
    flags: &mut [u8],
    g: usize,
    s: usize,
    targeted: usize,
) {
    flag_groups(x, flags, g, s, targeted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags against a sort by `(key, index)`: rows of every length up to MAX_GROUP,
    /// every k, tile counts that are not multiples of LANES, keys with ties everywhere, and
    /// f16 / f64 keys.
    #[test]
    fn rows_match_a_sort() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        fn check<T: Element>(x: &[T], g: usize, k: usize, what: &str) {
            let mut a = vec![9u8; x.len()];
            flag_groups(x, &mut a, g, 1, k);
            let mut b = vec![9u8; x.len()];
            flag_groups_dispatch(x, &mut b, g, 1, k);
            for (r, row) in x.chunks(g).enumerate() {
                let mut order: Vec<(T::Key, usize)> =
                    row.iter().map(|v| v.key()).zip(0..).collect();
                order.sort();
                let mut want = vec![0u8; g];
                for &(_, i) in &order[..k] {
                    want[i] = 1;
                }
                assert_eq!(
                    &a[r * g..(r + 1) * g],
                    &want[..],
                    "{what} g {g} k {k} row {r}"
                );
                assert_eq!(
                    &b[r * g..(r + 1) * g],
                    &want[..],
                    "{what} g {g} k {k} row {r}"
                );
            }
        }
        let values = [0.0f32, -0.0, 1.0, -1.0, 2.0, f32::NAN, f32::INFINITY, 0.5];
        for g in 1..=MAX_GROUP {
            let rows = 1 + (next() % 40) as usize;
            let ties: Vec<f32> = (0..rows * g)
                .map(|_| values[(next() % values.len() as u64) as usize])
                .collect();
            let any: Vec<f32> = (0..rows * g)
                .map(|_| f32::from_bits(next() as u32))
                .collect();
            let h: Vec<half::f16> = (0..rows * g)
                .map(|_| half::f16::from_bits(next() as u16))
                .collect();
            let d: Vec<f64> = (0..rows * g).map(|_| f64::from_bits(next())).collect();
            for k in [0, 1, g / 2, g.saturating_sub(1), g] {
                check(&ties, g, k, "ties");
                check(&any, g, k, "any bits");
                check(&h, g, k, "f16");
                check(&d, g, k, "f64");
            }
        }
    }
}
