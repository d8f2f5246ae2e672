//! The paper's ramp: targeted dropout starts gentle and reaches its full strength late.

use crate::config::check_fractions;
use candle_core::{bail, Result};

/// `alpha_t = alpha * min(1, t / T2)` and
/// `gamma_t = 0.95 gamma min(1, t / T1) + 0.05 gamma clip((t - T1) / (T2 - T1), 0, 1)`,
/// with the paper's `T1 = 20,000` and `T2 = 40,000` steps by default.
///
/// ```
/// use candle_targeted_dropout::RampSchedule;
/// # fn main() -> candle_core::Result<()> {
/// let s = RampSchedule::new(0.99, 0.99)?;
/// assert_eq!(s.at(0), (0.0, 0.0));
/// assert_eq!(s.at(40_000), (0.99, 0.99));
/// let (gamma, alpha) = s.at(20_000);
/// assert!((gamma - 0.95 * 0.99).abs() < 1e-12 && (alpha - 0.495).abs() < 1e-12);
/// assert!(RampSchedule::with_steps(0.5, 0.5, 100, 100).is_err()); // t1 must be < t2
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RampSchedule {
    gamma: f64,
    alpha: f64,
    t1: u64,
    t2: u64,
}

impl RampSchedule {
    /// The paper's T1: gamma reaches 95% of its final value.
    pub const PAPER_T1: u64 = 20_000;
    /// The paper's T2: gamma and alpha reach their final values.
    pub const PAPER_T2: u64 = 40_000;

    /// The paper's ramp to `gamma` and `alpha` (each in [0, 1]) over 20,000 and 40,000 steps.
    pub fn new(gamma: f64, alpha: f64) -> Result<Self> {
        Self::with_steps(gamma, alpha, Self::PAPER_T1, Self::PAPER_T2)
    }

    /// The same ramp over `0 < t1 < t2` steps, for runs of another length.
    pub fn with_steps(gamma: f64, alpha: f64, t1: u64, t2: u64) -> Result<Self> {
        check_fractions("RampSchedule", gamma, alpha)?;
        if t1 == 0 || t1 >= t2 {
            bail!("RampSchedule: the steps must satisfy 0 < t1 < t2, got t1 = {t1}, t2 = {t2}")
        }
        Ok(Self {
            gamma,
            alpha,
            t1,
            t2,
        })
    }

    /// The final gamma.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The final alpha.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// `(t1, t2)`: the steps at which gamma reaches 95% and everything its final value.
    pub fn steps(&self) -> (u64, u64) {
        (self.t1, self.t2)
    }

    /// `(gamma_t, alpha_t)` at step `t`, each in [0, 1].
    pub fn at(&self, t: u64) -> (f64, f64) {
        let t = t as f64;
        let (t1, t2) = (self.t1 as f64, self.t2 as f64);
        let ramp = |x: f64| x.clamp(0.0, 1.0);
        let alpha = self.alpha * ramp(t / t2);
        let gamma =
            0.95 * self.gamma * ramp(t / t1) + 0.05 * self.gamma * ramp((t - t1) / (t2 - t1));
        (gamma.min(self.gamma), alpha.min(self.alpha))
    }
}
