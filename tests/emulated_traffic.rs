//! The emulator's global-memory traffic counters (`emu/td_emu.h`, `td_emu_last_traffic`;
//! `emulate::Launch`'s `load_bytes` .. `store_sectors`), against sector counts worked out
//! here from the access pattern alone: the emulator's own test kernels (`emu/test/traffic.cu`:
//! a copy, a strided read, a 16-byte vector copy) launched through the C ABI under every
//! schedule, and a library op through `emulate::run_traced`.
#![cfg(feature = "emulate")]

use candle_core::{Device, Result, Tensor};
use candle_targeted_dropout::emulate::{self, Gpu};
use candle_targeted_dropout::targeted_weight_dropout_seeded;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CString};

/// `TdEmuSchedule` of `emu/td_emu.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct TdEmuSchedule {
    thread_order: u32,
    block_workers: u32,
    warp_runahead: u32,
    flags: u32,
    seed: u64,
    barrier_timeout_ms: u64,
}

/// `TdEmuTraffic` of `emu/td_emu.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TdEmuTraffic {
    load_bytes: u64,
    store_bytes: u64,
    load_sectors: u64,
    store_sectors: u64,
}

const COUNT_TRAFFIC: u32 = 1;
const INTERLEAVE: u32 = 2;

extern "C" {
    fn td_emu_launch(
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
    fn td_emu_last_traffic(out: *mut TdEmuTraffic);
}

const GRID: u32 = 5;
const BLOCK: u32 = 256;

/// Every schedule: thread order x warp run-ahead x fibers interleaved at accesses, 1..3
/// workers.
fn schedules(flags: u32) -> Vec<TdEmuSchedule> {
    let mut v = Vec::new();
    for order in 0..3 {
        for runahead in 0..2 {
            for interleave in [0, INTERLEAVE] {
                v.push(TdEmuSchedule {
                    thread_order: order,
                    block_workers: 1 + (order + runahead) % 3,
                    warp_runahead: runahead,
                    flags: flags | interleave,
                    seed: 0x7AFF1C + order as u64,
                    barrier_timeout_ms: 0,
                });
            }
        }
    }
    v
}

/// Launches emulator test kernel `name` (GRID x BLOCK threads) with the values `args`
/// (each argument's bytes), returns its traffic.
fn launch(name: &str, args: &mut [&mut [u8]], s: &TdEmuSchedule) -> TdEmuTraffic {
    let cname = CString::new(name).unwrap();
    let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(|a| a.as_mut_ptr().cast()).collect();
    let mut err = vec![0u8; 1024];
    // SAFETY: ptrs[i] points at argument i's value, of the kernel's argument type (a device
    // pointer is a host pointer to a live buffer large enough for what the kernel touches);
    // err holds err.len() bytes; the call blocks until the launch is done.
    let rc = unsafe {
        td_emu_launch(
            cname.as_ptr(),
            GRID,
            1,
            1,
            BLOCK,
            1,
            1,
            0,
            ptrs.as_mut_ptr(),
            ptrs.len() as u32,
            s,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    let end = err.iter().position(|&b| b == 0).unwrap_or(0);
    assert_eq!(rc, 0, "{name}: {}", String::from_utf8_lossy(&err[..end]));
    let mut t = TdEmuTraffic::default();
    // SAFETY: t is a TdEmuTraffic to write; the launch above ran on this thread.
    unsafe { td_emu_last_traffic(&mut t) };
    t
}

/// A buffer of `n` u32 whose first element is `skew` bytes past a 32-byte boundary.
struct Buf {
    raw: Vec<u32>,
    start: usize,
}
impl Buf {
    fn new(n: usize, skew: usize) -> Buf {
        assert_eq!(skew % 4, 0);
        let raw: Vec<u32> = (0..n + 16)
            .map(|i| (i as u32).wrapping_mul(2654435761))
            .collect();
        let base = raw.as_ptr() as usize;
        let start = ((32 - base % 32) % 32 + skew) / 4;
        Buf { raw, start }
    }
    fn ptr(&mut self) -> *mut u32 {
        self.raw[self.start..].as_mut_ptr()
    }
    fn get(&self, i: usize) -> u32 {
        self.raw[self.start + i]
    }
}

/// The sectors a grid-stride kernel's warps touch, as a coalescer groups them: per warp and
/// per iteration of the loop (one instruction instance), the distinct 32-byte sectors of
/// `addr(i)` .. `addr(i) + width` over its lanes' indices `i < n`.
fn sectors(n: usize, width: usize, addr: impl Fn(usize) -> usize) -> u64 {
    let threads = (GRID * BLOCK) as usize;
    let mut total = 0u64;
    let mut it = 0;
    while it * threads < n {
        for warp in 0..threads / 32 {
            let mut s = HashSet::new();
            for lane in 0..32 {
                let i = it * threads + warp * 32 + lane;
                if i < n {
                    let a = addr(i);
                    for sec in a / 32..=(a + width - 1) / 32 {
                        s.insert(sec);
                    }
                }
            }
            total += s.len() as u64;
        }
        it += 1;
    }
    total
}

fn bytes<T>(v: &mut T) -> &mut [u8] {
    // SAFETY: v is a live, plain value (a pointer or an integer) of size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast(), std::mem::size_of::<T>()) }
}

#[test]
fn a_copy_counts_one_read_and_one_write_per_element_in_whole_sectors() {
    // 10_000 elements: whole warps of 128 bytes (four sectors each) and a last half warp.
    let n = 10_000usize;
    for s in schedules(COUNT_TRAFFIC) {
        let mut src = Buf::new(n, 0);
        let mut dst = Buf::new(n, 0);
        let (mut ip, mut op, mut nn) = (src.ptr(), dst.ptr(), n as u64);
        let t = launch(
            "emu_test_copy_u32",
            &mut [bytes(&mut ip), bytes(&mut op), bytes(&mut nn)],
            &s,
        );
        let want = TdEmuTraffic {
            load_bytes: 4 * n as u64,
            store_bytes: 4 * n as u64,
            load_sectors: (4 * n / 32) as u64,
            store_sectors: (4 * n / 32) as u64,
        };
        assert_eq!(t, want, "schedule {s:?}");
        assert!(
            (0..n).all(|i| dst.get(i) == src.get(i)),
            "copy wrong, {s:?}"
        );
    }
}

#[test]
fn a_misaligned_copy_touches_a_fifth_sector_per_warp() {
    let n = 3_000usize;
    for s in schedules(COUNT_TRAFFIC) {
        let mut src = Buf::new(n, 4);
        let mut dst = Buf::new(n, 16);
        let (mut ip, mut op, mut nn) = (src.ptr(), dst.ptr(), n as u64);
        let t = launch(
            "emu_test_copy_u32",
            &mut [bytes(&mut ip), bytes(&mut op), bytes(&mut nn)],
            &s,
        );
        let (li, lo) = (sectors(n, 4, |i| 4 + 4 * i), sectors(n, 4, |i| 16 + 4 * i));
        // Each full warp: 128 bytes that straddle five sectors.
        assert_eq!(li, 5 * (n / 32) as u64 + 4); // the last 24 lanes: 96 bytes from byte 4
        assert_eq!(
            (t.load_sectors, t.store_sectors),
            (li, lo),
            "schedule {s:?}"
        );
        assert_eq!((t.load_bytes, t.store_bytes), (4 * n as u64, 4 * n as u64));
    }
}

#[test]
fn a_strided_read_counts_the_sectors_hardware_would() {
    let n = 2_500usize;
    for stride in [1u32, 2, 3, 8, 33] {
        for s in schedules(COUNT_TRAFFIC).into_iter().step_by(3) {
            let mut src = Buf::new(n * stride as usize, 0);
            let mut dst = Buf::new(n, 0);
            let (mut ip, mut op, mut nn, mut st) = (src.ptr(), dst.ptr(), n as u64, stride);
            let t = launch(
                "emu_test_strided_u32",
                &mut [
                    bytes(&mut ip),
                    bytes(&mut op),
                    bytes(&mut nn),
                    bytes(&mut st),
                ],
                &s,
            );
            let want = sectors(n, 4, |i| 4 * i * stride as usize);
            if stride >= 8 {
                assert_eq!(want, n as u64, "one sector per lane");
            }
            assert_eq!(t.load_sectors, want, "stride {stride}, schedule {s:?}");
            assert_eq!(t.store_sectors, (4 * n).div_ceil(32) as u64);
            assert_eq!((t.load_bytes, t.store_bytes), (4 * n as u64, 4 * n as u64));
            assert!((0..n).all(|i| dst.get(i) == src.get(i * stride as usize)));
        }
    }
}

#[test]
fn a_vector_copy_counts_sixteen_bytes_per_lane() {
    let n4 = 1_000usize;
    for s in schedules(COUNT_TRAFFIC).into_iter().step_by(5) {
        let mut src = Buf::new(4 * n4, 0);
        let mut dst = Buf::new(4 * n4, 0);
        let (mut ip, mut op, mut nn) = (src.ptr(), dst.ptr(), n4 as u64);
        let t = launch(
            "emu_test_copy_u32x4",
            &mut [bytes(&mut ip), bytes(&mut op), bytes(&mut nn)],
            &s,
        );
        let want = sectors(n4, 16, |i| 16 * i);
        assert_eq!(want, (16 * n4 / 32) as u64);
        let b = 16 * n4 as u64;
        assert_eq!(
            t,
            TdEmuTraffic {
                load_bytes: b,
                store_bytes: b,
                load_sectors: want,
                store_sectors: want
            },
            "schedule {s:?}"
        );
        assert!((0..4 * n4).all(|i| dst.get(i) == src.get(i)));
    }
}

#[test]
fn nothing_is_counted_unless_asked() {
    let n = 1_000usize;
    for s in schedules(0).into_iter().step_by(4) {
        let mut src = Buf::new(n, 0);
        let mut dst = Buf::new(n, 0);
        let (mut ip, mut op, mut nn) = (src.ptr(), dst.ptr(), n as u64);
        let t = launch(
            "emu_test_copy_u32",
            &mut [bytes(&mut ip), bytes(&mut op), bytes(&mut nn)],
            &s,
        );
        assert_eq!(t, TdEmuTraffic::default(), "schedule {s:?}");
    }
}

/// The traffic of a library op reaches `emulate::Launch`: a weight dropout with values out
/// on the block path writes each output element once, in whole sectors, and reads each
/// weight at least once.
#[test]
fn run_traced_reports_the_counters_of_each_launch() -> Result<()> {
    let (rows, n) = (64usize, 300usize);
    let w = Tensor::randn(0f32, 1.0, (rows, n), &Device::Cpu)?;
    let (_, launches) = emulate::run_traced(&Gpu::h200(), || {
        targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0)
    })?;
    assert!(!launches.is_empty());
    let numel = (rows * n) as u64;
    let load: u64 = launches.iter().map(|l| l.load_bytes).sum();
    let store: u64 = launches.iter().map(|l| l.store_bytes).sum();
    let store_sectors: u64 = launches.iter().map(|l| l.store_sectors).sum();
    let load_sectors: u64 = launches.iter().map(|l| l.load_sectors).sum();
    assert_eq!(store, 4 * numel, "{launches:?}");
    // Rows of 1200 bytes, written by consecutive lanes: at most one partial sector at each
    // end of a row beyond the whole ones.
    assert!(
        store_sectors >= 4 * numel / 32 && store_sectors <= 4 * numel / 32 + 2 * rows as u64,
        "{launches:?}"
    );
    assert!(
        load >= 4 * numel && load_sectors >= 4 * numel / 32,
        "{launches:?}"
    );
    Ok(())
}
