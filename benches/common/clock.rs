//! The benchmarks' clock: wall time, or with `TD_BENCH_CLOCK=cpu` the process's CPU time
//! (user + system of all its threads; Linux, 64-bit), which does not stretch when other
//! processes preempt this one. Run CPU-time measurements with `RAYON_NUM_THREADS=1`, so that
//! no idle worker's spinning is counted.
use std::time::Instant;

/// `struct timespec` of Linux on 64-bit targets.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// The process's CPU time in seconds (Linux, 64-bit), or `None` elsewhere.
fn process_cpu_time() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable `struct timespec`; libc is linked by std.
        let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Some(ts.sec as f64 + ts.nsec as f64 * 1e-9);
        }
    }
    None
}

/// Seconds on the clock (see the module), from an arbitrary start.
pub fn now() -> f64 {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let cpu = *CPU.get_or_init(cpu_clock);
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    match cpu.then(process_cpu_time).flatten() {
        Some(t) => t,
        None => START.get_or_init(Instant::now).elapsed().as_secs_f64(),
    }
}

/// Whether [`now`] is the CPU time: `TD_BENCH_CLOCK=cpu`, on a system that has it, and not
/// while comparing against a baseline binary (which knows only wall time).
pub fn cpu_clock() -> bool {
    std::env::var("TD_BENCH_CLOCK").is_ok_and(|c| c == "cpu")
        && std::env::var("TD_BENCH_BASELINE").is_err()
        && process_cpu_time().is_some()
}

/// What [`now`] measures, for the benchmarks' headers.
pub fn clock_name() -> &'static str {
    if cpu_clock() {
        "process CPU time"
    } else {
        "wall time"
    }
}
