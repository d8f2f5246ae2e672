//! The element types the ops accept (f16, bf16, f32, f64) and what the selection needs of
//! them: the magnitude key (DESIGN.md, "Targeted weight dropout", step 2) and the
//! accumulator of unit scores (step 1 of unit dropout).

use half::{bf16, f16};

/// An unsigned key that a radix select can take apart a digit at a time.
pub trait RadixKey: Copy + Ord + Eq + Send + Sync + Default + std::fmt::Debug + 'static {
    /// Width in bits.
    const BITS: u32;
    /// The key widened to 64 bits (order preserved).
    fn to_u64(self) -> u64;
    /// The low bits of `x` as a key.
    fn from_u64(x: u64) -> Self;
}

macro_rules! radix_key {
    ($($t:ty),*) => {$(
        impl RadixKey for $t {
            const BITS: u32 = <$t>::BITS;
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            fn from_u64(x: u64) -> Self {
                x as $t
            }
        }
    )*};
}
radix_key!(u16, u32, u64);

/// A floating element type the ops accept, with its magnitude key.
pub trait Element: Copy + Send + Sync + PartialEq + Default + std::fmt::Debug + 'static {
    /// The unsigned integer of the type's width.
    type Key: RadixKey;
    /// The IEEE bits with the sign bit cleared: -0.0 and +0.0 tie, NaN ranks above +Inf.
    fn key(self) -> Self::Key;
    /// +0.0
    const ZERO: Self;
}

macro_rules! element {
    ($t:ty, $key:ty, $mask:expr, $zero:expr) => {
        impl Element for $t {
            type Key = $key;
            #[inline(always)]
            fn key(self) -> $key {
                self.to_bits() & $mask
            }
            const ZERO: Self = $zero;
        }
    };
}
element!(f32, u32, 0x7fff_ffff, 0.0);
element!(f64, u64, 0x7fff_ffff_ffff_ffff, 0.0);
element!(f16, u16, 0x7fff, f16::ZERO);
element!(bf16, u16, 0x7fff, bf16::ZERO);

/// The accumulator of unit scores: f32 for f16, bf16 and f32 input, f64 for f64.
pub trait Score:
    Element + PartialOrd + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// NaN scores all rank above every number and tie with each other: one canonical NaN.
    fn canonical(self) -> Self;
}

impl Score for f32 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f32::NAN
        } else {
            self
        }
    }
}

impl Score for f64 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f64::NAN
        } else {
            self
        }
    }
}

/// An element type with its unit-score accumulator.
pub trait Scored: Element {
    /// f32, or f64 for f64 input.
    type Acc: Score;
    /// The value converted (exactly) to the accumulator type.
    fn to_acc(self) -> Self::Acc;
}

impl Scored for f32 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self
    }
}

impl Scored for f64 {
    type Acc = f64;
    fn to_acc(self) -> f64 {
        self
    }
}

impl Scored for f16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
}

impl Scored for bf16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
}
