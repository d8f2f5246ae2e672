//! The process-wide generator of the plain functions (DESIGN.md, "Random draws"): a
//! `(seed, offset)` pair that starts at `(0, 0)`, that [`set_seed`] resets and that each
//! plain call advances by one offset.

use std::sync::{Mutex, MutexGuard};

static GENERATOR: Mutex<(u64, u64)> = Mutex::new((0, 0));

fn generator() -> MutexGuard<'static, (u64, u64)> {
    // A panic elsewhere while holding the lock leaves a valid (seed, offset): keep using it.
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restarts the process-wide generator at `(seed, 0)`: the plain functions that follow
/// repeat the masks of an earlier run seeded the same way.
///
/// ```
/// use candle_targeted_dropout::{generator_state, set_seed};
/// set_seed(7);
/// # // Other doctests run in their own processes: nothing moves the generator meanwhile.
/// assert_eq!(generator_state(), (7, 0));
/// ```
pub fn set_seed(seed: u64) {
    *generator() = (seed, 0);
}

/// The `(seed, offset)` that the next plain call will use.
pub fn generator_state() -> (u64, u64) {
    *generator()
}

/// Puts the process-wide generator at `(seed, offset)`, e.g. the [`generator_state`] saved
/// with a checkpoint: a resumed run then draws the masks the uninterrupted run would have.
///
/// ```
/// use candle_targeted_dropout::{generator_state, set_generator_state};
/// set_generator_state(3, 1000);
/// assert_eq!(generator_state(), (3, 1000));
/// ```
pub fn set_generator_state(seed: u64, offset: u64) {
    *generator() = (seed, offset);
}

/// The state for one call, advancing the generator past it.
pub(crate) fn next_draw_state() -> (u64, u64) {
    take_offsets(1)
}

/// The state for `count` consecutive calls (offsets `offset .. offset + count`), taken at
/// once so that no other thread's call lands between them.
pub(crate) fn take_offsets(count: u64) -> (u64, u64) {
    let mut g = generator();
    let s = *g;
    g.1 = g.1.wrapping_add(count);
    s
}
